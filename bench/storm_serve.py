"""``flannel-guard serve`` with a chosen candidate order, for ``make bench-storm`` (bench only).

``python bench/storm_serve.py ORDER serve ...``: the same program as ``python -m webhook``,
with :attr:`webhook.control.allocator.Allocator.order` set to ``ORDER`` before it starts, so
that the storm measures each design of issue 26 in the same run and on the same code:

* ``next-fit``: kube-controller-manager's order, one pointer that every replica starts at 0
  (what flannel-guard did before issue 26);
* ``jump``: next-fit, and a replica that loses a race moves its pointer to the middle of the
  largest free run it knows of;
* ``spread``: the shipped order: the replica that leads (or knows of no other) walks from 0 as
  kube-controller-manager does, one that sees another lead walks from an offset derived from its
  identity, and a lost race jumps as in ``jump``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webhook.cli import main
from webhook.control.allocator import ORDERS, Allocator

if __name__ == "__main__":
    order = sys.argv.pop(1)
    if order not in ORDERS:
        raise SystemExit(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    Allocator.order = order
    sys.exit(main(sys.argv[1:]))

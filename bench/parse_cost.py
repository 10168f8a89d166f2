"""What one hostile review costs the event loop: the issue 15 inputs, and the worst within the caps.

``python bench/parse_cost.py`` (``make bench-parse``). For each input: the CPU time of
the pure review (``rules.review``: net-conf.json and cni-conf.json as flannel reads
them, on CREATE and on UPDATE, which parses a different old object too) and of reading the
AdmissionReview body (``admission.parse_review``: ``json.loads`` and the typed
request), best of five. These run on the event loop, so each is how long every other
request waits. Writes ``bench/out/parse_cost.json``. Measured, not asserted.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import flannel_configmap, make_view, review  # noqa: E402

from webhook.core.rules import ReviewInput, RuleSettings  # noqa: E402
from webhook.core.rules import review as rules_review  # noqa: E402
from webhook.core.rules.flannel import NET_CONF_MAX_BYTES  # noqa: E402
from webhook.service.admission import parse_review  # noqa: E402

OUT = ROOT / "bench" / "out" / "parse_cost.json"


def _filled(piece: Callable[[int], str], limit: int = NET_CONF_MAX_BYTES) -> str:
    """``{piece(0),piece(1),...}`` as long as it fits ``limit`` bytes."""
    items: list[str] = []
    size = 2
    while size + len(piece(len(items))) + 1 <= limit:
        items.append(piece(len(items)))
        size += len(items[-1]) + 1
    return "{" + ",".join(items) + "}"


def inputs() -> dict[str, str]:
    keys = ",".join(f'"k{i:05d}": 1' for i in range(40_000))
    near = ",".join(f'"Netwrok{i:05d}": 1' for i in range(60_000))
    return {
        # issue 15's inputs: refused unread now
        "issue: 40,000 keys twice (993 KB)": "{" + keys + "," + keys + "}",
        "issue: near-miss keys (976 KB)": "{" + near + "}",
        "issue: a single 6 MB key": '{"' + "Networ" * 1_000_000 + '": 1}',
        # the worst within the 4 KiB cap that could be constructed
        "cap: distinct CIDRs under one key": _filled(lambda i: f'"Network":"10.{i % 256}.{i // 256}.0/16"'),
        "cap: distinct IPs under SubnetMin": _filled(lambda i: f'"SubnetMin":"10.{i % 256}.{i // 256}.0"'),
        "cap: duplicate unknown keys": _filled(lambda i: f'"k{i // 2}":1'),
        "cap: near-miss keys": _filled(lambda i: f'"Netwrk{i}":1'),
        "cap: invalid values": _filled(lambda i: f'"Network":"x{i}"'),
        "cap: numbers": '{"k":[' + ",".join(["1"] * (NET_CONF_MAX_BYTES // 2 - 10)) + "]}",
        "cap: nesting": "[" * 2000 + "]" * 2000,
    }


def best_ms(fn: Callable[[], Any], runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return round(best * 1000, 3)


def main() -> int:
    view = make_view("10.244.0.0/16", nodes={f"n{i}": [f"10.244.{i}.0/24"] for i in range(200)})
    settings = RuleSettings()
    results: dict[str, Any] = {}
    for label, text in inputs().items():
        cm = flannel_configmap(text)
        create = ReviewInput("ConfigMap", "CREATE", "kube-flannel", "kube-flannel-cfg", cm, None)
        # The old object as hostile as the new (a text that differs is parsed again).
        old = flannel_configmap(text + " ")
        update = ReviewInput("ConfigMap", "UPDATE", "kube-flannel", "kube-flannel-cfg", cm, old)
        body = json.dumps(review(cm, "CREATE")).encode()
        findings = rules_review(create, view, settings)
        results[label] = {
            "net_conf_bytes": len(text.encode()),
            "review_body_bytes": len(body),
            "rules_create_ms": best_ms(lambda create=create: rules_review(create, view, settings)),
            "rules_update_ms": best_ms(lambda update=update: rules_review(update, view, settings)),
            "parse_body_ms": best_ms(lambda body=body: parse_review(body)),
            "findings": sorted({f.code for f in findings}),
        }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The figures behind tests/test_hostile.py's bounds: each attack's cost, measured once.

``python bench/hostile_figures.py``: one standalone server process; for each attack
the server's RSS before, at the height of the attack, and the wall time of a
legitimate review (a fresh connection from 127.0.0.2) sent during it, and how long
the server took to close the attacking connections. Writes
``bench/out/hostile_figures.json``. Measured, not asserted (the test asserts bounds).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from server_process import ServerProcess, serve  # noqa: E402
from test_hostile import bare, head, legit, rss_mib, tls, wait_closed  # noqa: E402

OUT = ROOT / "bench" / "out" / "hostile_figures.json"


def attack(server: ServerProcess, label: str, open_: Any, within: float) -> dict[str, Any]:
    before = rss_mib(server)
    started = time.monotonic()
    socks = open_()
    opened = time.monotonic() - started
    during = rss_mib(server)
    review_s = legit(server)
    closed_after = wait_closed(socks, within)
    figures = {"connections": len(socks), "opened_in_s": round(opened, 2),
               "rss_mib_before": round(before, 1), "rss_mib_during": round(during, 1),
               "legit_review_ms_during": round(review_s * 1000, 1),
               "all_closed_by_server_after_s": round(closed_after, 1),
               "rss_mib_after": round(rss_mib(server), 1)}
    print(label, figures, file=sys.stderr)
    return figures


def main() -> int:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp)) as server:
        legit(server)
        results["2,000 bare connects"] = attack(
            server, "bare", lambda: [bare(server) for _ in range(2000)], 30)
        results["300 TLS connections, idle after the handshake"] = attack(
            server, "idle", lambda: [tls(server) for _ in range(300)], 30)
        line = b"POST /validate HTTP/1.1\r\n"
        results["300 slowloris (request line, then nothing)"] = attack(
            server, "slow", lambda: [tls(server, send=line) for _ in range(300)], 30)
        results["40 held 7 MiB bodies (headers only)"] = attack(
            server, "held", lambda: [tls(server, send=head("/validate", 7 * 1024 * 1024)) for _ in range(40)],
            40)
        part = head("/validate", 2000) + b"{"
        results["200 slow small bodies"] = attack(
            server, "small", lambda: [tls(server, send=part) for _ in range(200)], 40)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

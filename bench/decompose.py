"""``make bench-decompose``: what each part of a Node review costs the server, part by part (issue 16).

Runs the real server (``python -m webhook serve``, cluster mode, 15,000 Nodes listed
from the emulated API, as ``make bench`` does) several times, each time with one
more part of the admission handler taken out, beside the floor
(``bench/floor_app.py``), and reports the server's CPU per request (user + system,
from ``/proc``) and p50 at concurrency 1 and 16. Rounds are interleaved, so that
every variant meets the same machine; each figure is the median over the rounds.
The difference between two neighbouring rows is what the part costs in the server,
which is several times what it costs in a tight in-process loop.

The variants are made by this file itself (``decompose.py --serve VARIANT ...``
patches module attributes of :mod:`webhook.service.app`, then runs the command
line): bench-only, never imported by ``webhook``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

# Each variant takes out what the one before it kept, plus one part.
VARIANTS: tuple[tuple[str, str], ...] = (
    ("server", "the server as shipped"),
    ("nolog", "without the admission log line"),
    ("nolog,nometrics", "... and without the admission metrics"),
    ("nolog,nometrics,norules", "... and without the rules (review and decide)"),
    ("nolog,nometrics,norules,noreview,noparse",
     "... and without the review and the JSON parse (framing and answer only)"),
    ("floorhandler", "the server with the floor's handler (its state, threads and index kept)"),
)


def patch(variant: set[str]) -> None:
    """Take the named parts out of the admission handler (in the server process)."""
    import webhook.service.app as app
    from webhook.core.rules import Verdict
    from webhook.service.metrics import Metrics

    class Silent:
        def info(self, *_: Any, **__: Any) -> None: ...
        debug = warning = exception = info

    if "nolog" in variant:
        app.log = Silent()  # type: ignore[assignment]
    if "nometrics" in variant:
        Metrics.answered = lambda *_: None  # type: ignore[method-assign]
    if "norules" in variant:
        app.review = lambda *_: []  # type: ignore[assignment]
        app.decide = lambda *_: Verdict(allowed=True)  # type: ignore[assignment]
    if "noreview" in variant:
        async def run(*_: Any) -> Verdict:
            return Verdict(allowed=True)
        app._run = run  # type: ignore[assignment]
    if "noparse" in variant:
        parse, kept = app.parse_review, []

        def parse_once(body: bytes) -> Any:  # the first body's parse, answered for every body
            if not kept:
                kept.append(parse(body))
            return kept[0]
        app.parse_review = parse_once  # type: ignore[assignment]
    if "floorhandler" in variant:
        sys.path.insert(0, str(BENCH))
        import floor_app

        floor = floor_app.floor_app().state.admission_routes["/validate"]
        call = app.AdmissionFastPath.__call__

        async def fast_path(self: Any, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"] == "/validate":
                return await floor(scope, receive, send)
            return await call(self, scope, receive, send)
        app.AdmissionFastPath.__call__ = fast_path  # type: ignore[method-assign]


def serve(variant: str, argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    patch(set(variant.split(",")))
    from webhook.cli import main

    return main(argv)


def measure(rounds: int, requests: int) -> dict[str, list[dict[str, float]]]:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(BENCH)]
    import run
    import workload

    api = run.BenchApiThread()
    api.set_nodes(run.BIG)
    bodies = workload.node_update_reviews(run.BIG, 200)
    out: dict[str, list[dict[str, float]]] = {name: [] for name, _ in (("floor", ""), *VARIANTS)}
    try:
        with tempfile.TemporaryDirectory(prefix="flannel-guard-decompose-") as tmp:
            env = run.Env(Path(tmp), api.api.url)
            for r in range(rounds):
                for name in out:
                    print(f"round {r + 1}/{rounds}: {name} ...", file=sys.stderr)
                    if name == "floor":
                        argv = [str(BENCH / "floor_app.py")]
                    else:
                        argv = [str(Path(__file__)), "--serve", name,
                                *run.webhook_argv(env, run.NODE_RANGE)[2:]]
                    with run.serving(env, argv, name.replace(",", "-")) as srv:
                        run.drive(env, srv, "/validate", bodies, count=requests // 2, concurrency=16)  # warm
                        c1 = run.drive(env, srv, "/validate", bodies, count=requests)
                        c16 = run.drive(env, srv, "/validate", bodies, count=requests * 2, concurrency=16)
                        for res in (c1, c16):
                            if res["first"]["response"]["allowed"] is not True:
                                raise SystemExit(f"{name}: unexpected answer {res['first']}")
                        out[name].append({"c1_p50_ms": c1["p50_ms"], "c1_cpu_us": c1["server_cpu_us"],
                                          "c16_p50_ms": c16["p50_ms"], "c16_cpu_us": c16["server_cpu_us"],
                                          "c16_rps": c16["rps"]})
    finally:
        api.close()
    return out


def render(out: dict[str, list[dict[str, float]]]) -> str:
    med = {name: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for name, rows in out.items()}
    floor = med["floor"]
    described = dict((("floor", "the floor: the same stack answering fixed bytes"), *VARIANTS))
    lines = [f"{'variant':74s} {'c=1 p50':>8s} {'CPU/req':>8s} {'/floor':>6s} {'c=16 CPU':>9s} {'/floor':>6s}"
             f" {'c=16 req/s':>10s} {'/floor':>6s}"]
    for name, m in med.items():
        lines.append(f"{described[name]:74s} {m['c1_p50_ms']:8.3f} {m['c1_cpu_us']:8.1f}"
                     f" {m['c1_cpu_us'] / floor['c1_cpu_us']:5.2f}x {m['c16_cpu_us']:9.1f}"
                     f" {m['c16_cpu_us'] / floor['c16_cpu_us']:5.2f}x {m['c16_rps']:10.0f}"
                     f" {m['c16_rps'] / floor['c16_rps']:5.2f}x")
    spread = {name: [round(r["c16_cpu_us"]) for r in rows] for name, rows in out.items()}
    lines.append(f"(ms and µs; medians of {len(out['floor'])} interleaved rounds;"
                 f" c=16 CPU per round: {spread})")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        raise SystemExit(serve(sys.argv[2], sys.argv[3:]))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=1500,
                   help="measured requests per run at c=1 (twice as many at c=16)")
    p.add_argument("--server-python", default=sys.executable)
    args = p.parse_args()
    sys.path[:0] = [str(BENCH)]
    import run

    run.SERVER_PYTHON = args.server_python
    print(render(measure(args.rounds, args.requests)))


if __name__ == "__main__":
    main()

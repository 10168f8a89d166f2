"""``flannel-guard serve`` with tracemalloc on, for the soak's memory questions (bench only).

``python bench/traced_serve.py OUT_DIR serve ...``: the same program as ``python -m
webhook``; the first SIGUSR1 starts :mod:`tracemalloc` (25 frames: tracing from the start
makes start-up too slow for the soak's readiness deadline), each later one writes a snapshot
to ``OUT_DIR/snap-NNN.pickle`` from a thread of its own (the event loop is not touched).
Growth is measured between snapshots, so what was allocated before tracing began does not
matter. ``bench/soak.py`` uses it when ``SOAK_TRACE=1`` and diffs the snapshots taken after
its warm-up window (:func:`diff`). Tracing slows the server and inflates its RSS: RSS
figures of a traced run are not the soak's figures, only its diff of live Python objects is.
"""

from __future__ import annotations

import signal
import sys
import threading
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def diff(first: Path, last: Path, top: int = 15) -> list[str]:
    """The ``top`` allocation sites that grew most from ``first`` to ``last`` (by size), as lines."""
    a = tracemalloc.Snapshot.load(str(first))
    b = tracemalloc.Snapshot.load(str(last))
    stats = b.compare_to(a, "traceback")
    out = [f"traced total {sum(s.size for s in a.statistics('filename')) // 1024} KiB ->"
           f" {sum(s.size for s in b.statistics('filename')) // 1024} KiB"]
    for stat in stats[:top]:
        frames = [f"{f.filename.rsplit('/site-packages/', 1)[-1]}:{f.lineno}" for f in stat.traceback[-4:]]
        where = " < ".join(reversed(frames))
        out.append(f"{stat.size_diff / 1024:+.1f} KiB ({stat.count_diff:+d} blocks) {where}")
    return out


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    wanted = threading.Event()

    def writer() -> None:
        n = 0
        while True:
            wanted.wait()
            wanted.clear()
            if not tracemalloc.is_tracing():
                tracemalloc.start(25)
                continue
            tracemalloc.take_snapshot().dump(str(out / f"snap-{n:03d}.pickle"))
            (out / f"snap-{n:03d}.done").touch()
            n += 1

    threading.Thread(target=writer, daemon=True, name="snapshots").start()
    signal.signal(signal.SIGUSR1, lambda *_: wanted.set())
    sys.path.insert(0, str(ROOT))
    from webhook.cli import main as cli_main

    return cli_main(sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())

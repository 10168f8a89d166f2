"""``make bench-match``: how many of 1,000 Node writes kube-apiserver sends to the Node webhooks.

The writes are a seeded mix of a cluster's life (tests/node_writes.py, each proportion's
source in its docstring); each is decided as kube-apiserver decides it (tests/
admission_match.py): the webhooks' rules from manifests/base/webhooks.yaml, then their
matchConditions, evaluated with cel-python. "Without" counts the writes the rules alone send
(the same manifests with no matchConditions); "with" those sent as shipped. The ConfigMap
webhooks' rules name ``configmaps`` only: no Node write reaches them either way.

Run for both allocators: kube-controller-manager (it patches the podCIDR after registration)
and flannel-guard (``/mutate`` gives it inside the CREATE). A count, not a timing: the same
figures on every machine. Prints a table and writes ``bench/out/match_calls.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent / "tests")]

from admission_match import (  # noqa: E402
    MUTATE_NODES,
    VALIDATE_NODES,
    VALIDATE_PODCIDRS,
    node_outcomes,
    tally,
    webhooks,
)
from node_writes import ALLOCATORS, KINDS, node_writes  # noqa: E402

OUT = BENCH / "out"
HOOKS = {VALIDATE_PODCIDRS: "validate-podcidrs", VALIDATE_NODES: "validate-nodes",
         MUTATE_NODES: "mutate-nodes"}


def measure(n: int, seed: int, allocator: str) -> dict[str, Any]:
    writes = node_writes(n, seed=seed, allocator=allocator)
    started = time.perf_counter()
    outcomes = node_outcomes(writes)
    counts = tally(outcomes)
    others = [h.name for h in webhooks().values() if h.name not in counts]
    return {"allocator": allocator, "writes": len(writes), "seed": seed,
            "writes_by_kind": dict(Counter(w.kind for w in writes)),
            "status_subresource_writes": sum(w.subresource == "status" for w in writes),
            "hooks": counts, "not_reached_by_node_writes": others,
            "cel_seconds": round(time.perf_counter() - started, 2)}


def table(result: dict[str, Any]) -> str:
    hooks = result["hooks"]
    head = f"{'write':<28} {'resource':<13} {'writes':>6}"
    for short in HOOKS.values():
        head += f" | {short + ' without':>22} {'with':>5}"
    lines = [f"allocator: {result['allocator']} ({result['writes']} Node writes, seed {result['seed']})",
             head, "-" * len(head)]
    for kind in KINDS:
        writes = result["writes_by_kind"].get(kind, 0)
        if not writes:
            continue
        resource = "nodes/status" if kind in ("status", "flannel-annotations") else "nodes"
        row = f"{kind:<28} {resource:<13} {writes:>6}"
        for hook in HOOKS:
            k = hooks[hook]["by_kind"].get(kind, {"without": 0, "with": 0})
            row += f" | {k['without']:>22} {k['with']:>5}"
        lines.append(row)
    lines.append("-" * len(head))
    total = f"{'total':<28} {'':<13} {result['writes']:>6}"
    for hook in HOOKS:
        total += f" | {hooks[hook]['without']:>22} {hooks[hook]['with']:>5}"
    lines.append(total)
    for hook, short in HOOKS.items():
        h = hooks[hook]
        lines.append(f"{short}: {h['without']} -> {h['with']} calls ({h['reduction']:.1%} fewer); "
                     f"expression errors {h['errors']}, requests rejected {h['rejected']}")
    lines.append(f"not reached by any Node write: {', '.join(result['not_reached_by_node_writes'])}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=16)
    args = p.parse_args()
    results = [measure(args.writes, args.seed, a) for a in ALLOCATORS]
    for r in results:
        print(table(r))
        print()
    OUT.mkdir(exist_ok=True)
    (OUT / "match_calls.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT / 'match_calls.json'}")
    errors = sum(h["errors"] + h["rejected"] for r in results for h in r["hooks"].values())
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())

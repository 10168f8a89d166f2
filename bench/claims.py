"""``make bench-claims``: what a claimed write costs, and a race that counts duplicates stored.

1. *Cost.* One server in cluster mode on the emulated API with 1,000 Nodes.
   Side by side in one run: a plain Node validation (a label UPDATE, nothing
   claimed) and a claimed write (a Node CREATE carrying a fresh podCIDR: one
   exclusive Lease create, no read). Targets: claimed p99 <= 2x the plain p99.
2. *Race.* Two replicas on one API; pairs of Nodes patched to the same CIDR at
   the same moment, one write of each pair to each replica, over concurrent
   HTTPS clients; the script plays the API server (stores what is admitted).
   Target: 0 duplicates stored, exactly one admission per pair.

Prints measured / target / met and writes ``bench/out/claims.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import ssl
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH.parent / "tests"), str(BENCH)]

import httpx  # noqa: E402
import workload  # noqa: E402
from kube_emulator import node as api_node  # noqa: E402
from run import OUT, BenchApiThread, Env, drive, median_of, serving, webhook_argv  # noqa: E402

CLUSTER = "10.0.0.0/8"


def claimed_writes(prefix: str, first: int, n: int) -> list[str]:
    """Node CREATEs each carrying a podCIDR no node holds (index ``first`` onwards)."""
    out = []
    for k in range(n):
        obj = workload.node(first + k, name=f"{prefix}-{k:05d}")
        out.append(workload.review(obj, "CREATE"))
    return out


def cost(env: Env, api: BenchApiThread, runs: int, requests: int) -> dict[str, Any]:
    api.set_nodes(1000)
    plain_runs, claimed_runs = [], []
    with serving(env, webhook_argv(env, CLUSTER), "claims-cost") as srv:
        plain = workload.node_update_reviews(1000, 200)
        for r in range(runs):
            plain_runs.append(drive(env, srv, "/validate", plain, count=requests))
            # Fresh CIDRs every run (a repeated one would be the node's own known claim: no write).
            bodies = claimed_writes(f"c{r}", 20000 + r * (requests + 60), requests + 50)
            claimed_runs.append(drive(env, srv, "/validate", bodies, count=requests))
            first = claimed_runs[-1]["first"]["response"]
            if not first["allowed"]:
                raise SystemExit(f"claimed write refused: {json.dumps(first)[:400]}")
    plain_m, claimed_m = median_of(plain_runs), median_of(claimed_runs)
    return {"plain": plain_m, "claimed": claimed_m,
            "leases_written": len(api.api.leases),
            "spread_p99_claimed": [round(r["p99_ms"], 3) for r in claimed_runs],
            "spread_p99_plain": [round(r["p99_ms"], 3) for r in plain_runs]}


async def _race(urls: list[str], ca: Path, api: BenchApiThread, pairs: int) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(ca))
    both = neither = 0
    async with httpx.AsyncClient(verify=ctx, timeout=30, limits=httpx.Limits(max_connections=64)) as c:
        sem = asyncio.Semaphore(32)

        async def write(url: str, name: str, cidr: str) -> bool:
            old = workload.node(0, cidr=False, name=name)
            new = copy.deepcopy(old)
            new["spec"] = {"podCIDR": cidr, "podCIDRs": [cidr]}
            body = workload.review(new, "UPDATE", old)
            r = await c.post(f"{url}/validate", content=body, headers={"Content-Type": "application/json"})
            allowed = r.json()["response"]["allowed"]
            if allowed:  # the API server stores what was admitted
                await api.acall(api.api.put_node(api_node(name, cidr)))
            return allowed

        async def pair(i: int) -> tuple[bool, bool]:
            cidr = f"10.{200 + i // 256}.{i % 256}.0/24"
            async with sem:
                return await asyncio.gather(write(urls[0], f"race-{i}-a", cidr),
                                            write(urls[1], f"race-{i}-b", cidr))

        results = await asyncio.gather(*(pair(i) for i in range(pairs)))
    for a, b in results:
        both += a and b
        neither += not a and not b
    stored = Counter(cidr for n in list(api.api.nodes.values())
                     for cidr in (n.get("spec") or {}).get("podCIDRs") or [])
    return {"pairs": pairs, "writes": 2 * pairs, "both_admitted": both, "neither_admitted": neither,
            "duplicates_stored": sum(n - 1 for n in stored.values() if n > 1)}


def race(env: Env, api: BenchApiThread, pairs: int) -> dict[str, Any]:
    api.set_nodes(0)
    api.clear_leases()
    with serving(env, webhook_argv(env, CLUSTER), "race-0") as one, \
            serving(env, webhook_argv(env, CLUSTER), "race-1") as two:
        started = time.perf_counter()
        out = asyncio.run(_race([f"https://127.0.0.1:{one.port}", f"https://127.0.0.1:{two.port}"],
                                env.ca, api, pairs))
        out["wall_s"] = round(time.perf_counter() - started, 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--pairs", type=int, default=600, help="same-CIDR pairs raced (2 writes each)")
    args = p.parse_args()
    api = BenchApiThread()
    try:
        with tempfile.TemporaryDirectory(prefix="flannel-guard-claims-") as tmp:
            env = Env(Path(tmp), api.api.url)
            print("claimed write against plain validation ...", file=sys.stderr)
            c = cost(env, api, args.runs, args.requests)
            print("race on two replicas ...", file=sys.stderr)
            r = race(env, api, args.pairs)
    finally:
        api.close()
    ratio = c["claimed"]["p99_ms"] / c["plain"]["p99_ms"]
    rows = [
        ("claimed write p99 / plain validation p99", f"{ratio:.2f}x", "<= 2.00x", ratio <= 2.0),
        ("claimed write p50 / plain validation p50",
         f"{c['claimed']['p50_ms'] / c['plain']['p50_ms']:.2f}x", "-", None),
        ("duplicates stored", str(r["duplicates_stored"]), "0", r["duplicates_stored"] == 0),
        ("pairs with both admitted", str(r["both_admitted"]), "0", r["both_admitted"] == 0),
        ("pairs with neither admitted", str(r["neither_admitted"]), "0", r["neither_admitted"] == 0),
    ]
    print(f"plain validation: p50 {c['plain']['p50_ms']:.3f} ms, p99 {c['plain']['p99_ms']:.3f} ms;"
          f" claimed write: p50 {c['claimed']['p50_ms']:.3f} ms, p99 {c['claimed']['p99_ms']:.3f} ms"
          f" (median of {args.runs} runs; p99 spread claimed {c['spread_p99_claimed']},"
          f" plain {c['spread_p99_plain']})")
    print(f"race: {r['writes']} writes in {r['pairs']} pairs, {r['wall_s']} s")
    for name, measured, target, met in rows:
        print(f"{name:44s} measured {measured:>8s}  target {target:>8s}  "
              f"{'met' if met else ('-' if met is None else 'NOT MET')}")
    OUT.mkdir(exist_ok=True)
    (OUT / "claims.json").write_text(json.dumps({"cost": c, "race": r, "p99_ratio": ratio,
                                                 "median_of": statistics.median([args.runs])}, indent=2))


if __name__ == "__main__":
    main()

"""``make bench-storm``: a join storm on one, two and three replicas, and one while none answered.

Issue 26. The emulated API of ``tests/kube_emulator.py`` runs in a thread of this process
(``bench/storm_api.py``: counts the podCIDR Lease writes and the lost races), the
replicas are real server processes (``bench/storm_serve.py``: ``flannel-guard serve`` with a
chosen candidate order, ``--order``), and the joiners run in a process of their own
(``--drive``), as ``make bench``'s load generator does. Together they play kube-apiserver:

1. *The storm.* 1,000 Nodes join, 32 at once. Each Node CREATE goes to ``/mutate`` on one
   replica (round robin), then to ``/validate`` on a replica of its own (as a Service spreads
   them), and the Node is stored as admitted: with the patch's podCIDR, or without one (past
   the pending cap or the range). The leader's loop gives those a podCIDR once stored. For one,
   two and three replicas, in the same run and in that order: the wall time until every Node is
   stored with a podCIDR, p50 / p99 per mutation, conflicts per claim (Lease creates answered
   409 for another holder, per Lease created), Lease writes per node (creates, renewals and
   deletes of podCIDR Leases) and the duplicates stored. The replicas' own count of lost races
   (``flannel_guard_mutate_claims_total{outcome="lost"}``) is printed beside the API's.
2. *The outage.* 1,000 Nodes stored without a podCIDR while no replica ran; then one replica
   starts: the time from its first ``/readyz`` 200 until every Node has a podCIDR.

Prints measured / target / met for issue 26's targets and writes ``bench/out/storm.json``.
Figures from a shared 2-core machine are noisy: run it three times.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import resource
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH.parent / "tests"), str(BENCH)]

import httpx  # noqa: E402
from conftest import node, review  # noqa: E402
from kube_emulator import node as api_node  # noqa: E402
from run import OUT, Env, Server, percentile  # noqa: E402
from storm_api import StormApiThread  # noqa: E402

CLUSTER = "10.0.0.0/12"  # 4,096 /24 blocks: room for the storm's 1,000 nodes, four times over
NODES = 1000
CONCURRENCY = 32



def argv(env: Env, order: str) -> list[str]:
    return [str(BENCH / "storm_serve.py"), order, "serve", "--kubeconfig", str(env.kubeconfig),
            "--cluster-cidr", CLUSTER, "--log-level", "warning"]


def stored_cidrs(api: StormApiThread) -> list[str]:
    return [c for n in list(api.api.nodes.values()) for c in (n.get("spec") or {}).get("podCIDRs") or []]


def patch_cidrs(resp: dict[str, Any]) -> list[str]:
    if not resp.get("allowed") or "patch" not in resp:
        return []
    for op in json.loads(base64.b64decode(resp["patch"])):
        if op["path"] == "/spec/podCIDRs":
            return list(op["value"])
        if op["path"] == "/spec":
            return list(op["value"]["podCIDRs"])
    return []


def lost_by_replicas(urls: list[str], ctx: ssl.SSLContext) -> int:
    total = 0
    for url in urls:
        text = httpx.get(f"{url}/metrics", verify=ctx, timeout=10).text
        for line in text.splitlines():
            if line.startswith('flannel_guard_mutate_claims_total{outcome="lost"}'):
                total += int(float(line.split()[-1]))
    return total


async def _storm(urls: list[str], ctx: ssl.SSLContext, api_url: str, tag: str) -> dict[str, Any]:
    """The joiners, in a process of their own (``--drive``): each Node is stored by a POST to the
    emulated API, as a kubelet registers it, so that this process's TLS does not share an
    interpreter with the emulated API."""
    latencies: list[float] = []
    without = 0
    limits = httpx.Limits(max_connections=2 * CONCURRENCY)
    async with httpx.AsyncClient(verify=ctx, timeout=httpx.Timeout(60.0, pool=None), limits=limits) as c, \
            httpx.AsyncClient(base_url=api_url, timeout=60, limits=limits) as kube:
        sem = asyncio.Semaphore(CONCURRENCY)

        async def join(i: int) -> None:
            nonlocal without
            name = f"{tag}-{i:04d}"
            async with sem:
                body = review(node(name), "CREATE")
                started = time.perf_counter()
                r = await c.post(f"{urls[i % len(urls)]}/mutate", json=body)
                latencies.append(time.perf_counter() - started)
                resp = r.json()["response"]
                cidrs = patch_cidrs(resp)
                if cidrs:
                    # The API server calls the validating webhook with the patched Node.
                    patched = node(name, *cidrs)
                    v = await c.post(f"{random.choice(urls)}/validate", json=review(patched, "CREATE"))
                    if not v.json()["response"]["allowed"]:
                        raise SystemExit(f"the patched node was refused: {v.text[:400]}")
                else:
                    without += 1
                stored = await kube.post("/api/v1/nodes", json=api_node(name, *cidrs))
                if stored.status_code != 201:
                    raise SystemExit(f"node {name} not stored: {stored.status_code} {stored.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(join(i) for i in range(NODES)))
    return {"latencies": sorted(latencies), "admitted_without": without, "started": started,
            "finished": time.perf_counter()}


def all_assigned(api: StormApiThread, count: int, deadline_s: float) -> float | None:
    """Poll the emulated API (a measurement, not a test) until ``count`` Nodes hold a podCIDR."""
    started = time.perf_counter()
    while time.perf_counter() - started < deadline_s:
        if len(stored_cidrs(api)) >= count:
            return time.perf_counter()
        time.sleep(0.02)
    return None


def storm(env: Env, api: StormApiThread, replicas: int, order: str) -> dict[str, Any]:
    api.reset()
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(_serving(env, argv(env, order), f"storm-{replicas}-{k}"))
                   for k in range(replicas)]
        urls = [f"https://127.0.0.1:{s.port}" for s in servers]
        cpu = [s.cpu_s() for s in servers]
        mine = time.process_time()  # this process: the emulated API's thread
        started = time.perf_counter()
        spec = env.tmp / "drive.json"
        spec.write_text(json.dumps({"urls": urls, "ca": str(env.ca), "api": api.api.url,
                                    "tag": f"r{replicas}"}))
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        run = subprocess.run([sys.executable, __file__, "--drive", str(spec)], capture_output=True,
                             check=False)
        if run.returncode:
            raise SystemExit(f"the joiners failed: {run.stderr.decode()[-2000:]}")
        out = json.loads(run.stdout)
        # CLOCK_MONOTONIC is the machine's: the storm starts at the joiners' first request.
        started = out["started"]
        answered = out["finished"] - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        joiners = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        done = all_assigned(api, NODES, 120)
        cpu = [s.cpu_s() - c for s, c in zip(servers, cpu, strict=True)]
        mine = time.process_time() - mine
        lost_counted = lost_by_replicas(urls, env.ctx)
    lat = out["latencies"]
    writes = api.api.writes  # type: ignore[attr-defined]
    created = writes["create"] - writes["lost"] - writes["own"]
    cidrs = stored_cidrs(api)
    return {
        "replicas": replicas, "order": order,
        "wall_s": round(done - started, 3) if done else None,
        "mutations_answered_s": round(answered, 3),
        "p50_ms": round(percentile(lat, 50) * 1000, 2), "p99_ms": round(percentile(lat, 99) * 1000, 2),
        "max_ms": round(lat[-1] * 1000, 2),
        "admitted_without": out["admitted_without"],
        "leases_created": created, "lost_races": writes["lost"], "lost_counted_by_replicas": lost_counted,
        "conflicts_per_claim": round(writes["lost"] / max(created, 1), 4),
        "lease_writes_per_node": round((writes["create"] + writes["renew"] + writes["delete"]) / NODES, 3),
        "writes": dict(writes),
        "duplicates_stored": sum(n - 1 for n in Counter(cidrs).values() if n > 1),
        "nodes_with_cidr": len(cidrs),
        "server_cpu_s": [round(c, 2) for c in cpu],
        "api_cpu_s": round(mine, 2), "joiners_cpu_s": round(joiners, 2),
    }


def outage(env: Env, api: StormApiThread, order: str) -> dict[str, Any]:
    api.reset({f"late-{i:04d}": api_node(f"late-{i:04d}") for i in range(NODES)})
    with _serving(env, argv(env, order), "outage-0"):
        ready = time.perf_counter()
        done = all_assigned(api, NODES, 120)
    cidrs = stored_cidrs(api)
    writes = api.api.writes  # type: ignore[attr-defined]
    return {"after_ready_s": round(done - ready, 3) if done else None, "nodes_with_cidr": len(cidrs),
            "duplicates_stored": sum(n - 1 for n in Counter(cidrs).values() if n > 1),
            "lease_writes_per_node": round(sum(writes[k] for k in ("create", "renew", "delete")) / NODES, 3)}


@contextlib.contextmanager
def _serving(env: Env, args: list[str], name: str) -> Any:
    server = Server(env, args, name)
    try:
        yield server
    finally:
        server.stop()


def drive(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    ctx = ssl.create_default_context(cafile=spec["ca"])
    out = asyncio.run(_storm(spec["urls"], ctx, spec["api"], spec["tag"]))
    print(json.dumps(out))


def main() -> None:
    if sys.argv[1:2] == ["--drive"]:
        drive(sys.argv[2])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--order", default="spread", help="candidate order of the replicas (storm_serve.py)")
    p.add_argument("--replicas", default="1,2,3")
    p.add_argument("--no-outage", action="store_true")
    p.add_argument("--api-ms", type=float, default=0.0,
                   help="latency of each Lease write and read in the emulated API (an etcd write's)")
    args = p.parse_args()
    api = StormApiThread()
    api.api.delay = args.api_ms / 1000  # type: ignore[attr-defined]
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="flannel-guard-storm-") as tmp:
            env = Env(Path(tmp), api.api.url)
            for r in (int(x) for x in args.replicas.split(",")):
                print(f"storm on {r} replica(s), order {args.order} ...", file=sys.stderr)
                results.append(storm(env, api, r, args.order))
            late = None if args.no_outage else outage(env, api, args.order)
    finally:
        api.close()
    print(f"{'replicas':>8} {'wall s':>7} {'answered s':>10} {'p50 ms':>7} {'p99 ms':>7} {'without':>7}"
          f" {'lost':>5} {'(replicas)':>10} {'lost/claim':>10} {'writes/node':>11} {'dup':>4}"
          f" {'API cpu s':>9} {'joiners cpu s':>13} {'replicas cpu s':>18}")
    for x in results:
        print(f"{x['replicas']:>8} {x['wall_s'] or float('nan'):>7.2f} {x['mutations_answered_s']:>10.2f}"
              f" {x['p50_ms']:>7.1f} {x['p99_ms']:>7.1f} {x['admitted_without']:>7} {x['lost_races']:>5}"
              f" {x['lost_counted_by_replicas']:>10} {x['conflicts_per_claim']:>10.4f}"
              f" {x['lease_writes_per_node']:>11.3f} {x['duplicates_stored']:>4}"
              f" {x['api_cpu_s']:>9.2f} {x['joiners_cpu_s']:>13.2f} {x['server_cpu_s']!s:>18}")
    rows: list[tuple[str, str, str, bool]] = []
    one = next((x for x in results if x["replicas"] == 1), None)
    for x in results:
        if one is None or x is one or not (x["wall_s"] and one["wall_s"]):
            continue
        w, q = x["wall_s"] / one["wall_s"], x["p99_ms"] / one["p99_ms"]
        rows.append((f"{x['replicas']} replicas: wall / one replica's", f"{w:.2f}x", "<= 1.20x", w <= 1.2))
        rows.append((f"{x['replicas']} replicas: p99 / one replica's", f"{q:.2f}x", "<= 1.20x", q <= 1.2))
    for x in results:
        pct = 100 * x["conflicts_per_claim"]
        rows.append((f"{x['replicas']} replica(s): lost races per claim", f"{pct:.2f}%", "<= 1%", pct <= 1))
        rows.append((f"{x['replicas']} replica(s): duplicates stored", str(x["duplicates_stored"]), "0",
                     x["duplicates_stored"] == 0))
    if late is not None:
        s = late["after_ready_s"]
        rows.append(("outage: every node has a podCIDR, after ready", f"{s:.2f} s" if s else "never",
                     "<= 10 s", bool(s) and s <= 10))
        rows.append(("outage: duplicates stored", str(late["duplicates_stored"]), "0",
                     late["duplicates_stored"] == 0))
    for name, measured, target, met in rows:
        print(f"{name:48s} measured {measured:>9s}  target {target:>9s}  {'met' if met else 'NOT MET'}")
    OUT.mkdir(exist_ok=True)
    (OUT / "storm.json").write_text(json.dumps({"order": args.order, "cluster_cidr": CLUSTER,
                                                "api_ms": args.api_ms, "storms": results, "outage": late},
                                               indent=2))


if __name__ == "__main__":
    main()

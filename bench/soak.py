"""The soak: a server process in cluster mode under a steady, mixed load for SOAK_SECONDS (600).

``make soak`` (``python bench/soak.py``). One ``flannel-guard serve --kubeconfig``
process against :class:`FakeKubeApi` on loopback (``keep_requests=False``), dual-stack
(``POOL_V4`` 10.240.0.0/19 at /28: a pool of 512 blocks, and a wide IPv6 range), and in
this process:

* a steady load (``SOAK_RPS``, 100 by default) of AdmissionReviews: IPv6-only Nodes
  with a free podCIDR (admitted), Nodes overlapping a pinned node (denied), Nodes
  registering (/mutate, then /validate of what it gave, then stored in the API), the
  flannel ConfigMap right (admitted) and wrong (denied), and bad requests (not JSON,
  wrong content type, a ``uid`` that is not a string, no request, an oversized body: 4xx);
* node churn: every registered node is created in the API, and the oldest are deleted so
  that about ``SOAK_LIVE`` (200) live at any time; the watch is dropped once a minute;
* a certificate rotation at half time: a new pair is written over tls.crt /
  tls.key atomically (as a Secret volume update), the client trusts both CAs,
  and a probe opens a fresh TLS connection every second to see when the new
  certificate is served;
* the hostile phase (``SOAK_HOSTILE=0`` turns it off), for the whole run, in a
  process of its own (``bench/attacker.py``): bare connects past the connection
  cap, slowloris connections, held 7 MiB bodies, forged reviews, bursts of forged
  Node CREATEs to /mutate that drain the pool (issue 15), and the sustained renewing drain
  (the same forged names re-sent a few times a second, issue 28).

A registering node must be admitted: with a patch giving one IPv4 /28 of the pool and one
IPv6 /64, held by no stored Node, or, only while forged reservations exhaust the pool or fill
the cap on pending claims, with no patch and the "no free podCIDR" or "no podCIDR assigned"
warning; those are stored without a podCIDR, counted
apart, and followed until the assigning loop patches them. At the end, with the attacker
stopped, every live node must get a podCIDR within ``SETTLE_SECONDS``; two stored Nodes
with one podCIDR, at any moment, are unexpected. The pool's gauges are scraped every 5 s.

RSS is sampled every 10 s with its split (heap, anonymous mappings, threads); the verdict
is the slope over the second half against ``FLAT_KIB_PER_MIN`` (printed, not asserted).
``SOAK_TRACE=1`` runs the server under tracemalloc (``bench/traced_serve.py``) and names the
allocation sites that grew after the warm-up.

Every response is checked against what its request should get; anything else
is counted as unexpected (with a few samples). Writes ``bench/out/soak.json``
(``SOAK_OUT``). Measured, not asserted: not part of ``make test``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import itertools
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import aiohttp.web  # noqa: E402
import httpx  # noqa: E402
from conftest import flannel_configmap, net_conf, node, review  # noqa: E402
from kube_emulator import ApiThread, FakeKubeApi, free_port, kubeconfig_file, rss_kib  # noqa: E402
from kube_emulator import node as api_node  # noqa: E402

from webhook.service import certs  # noqa: E402

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
RPS = float(os.environ.get("SOAK_RPS", "100"))
LIVE = int(os.environ.get("SOAK_LIVE", "200"))
HOSTILE = os.environ.get("SOAK_HOSTILE", "1") != "0"
# SOAK_TRACE=1: the server runs under tracemalloc (bench/traced_serve.py), a snapshot at each
# RSS sample after the warm-up; the result names the allocation sites that grew. Its RSS is
# not the soak's RSS (tracing costs memory and time).
TRACE = os.environ.get("SOAK_TRACE") == "1"
WARMUP = 0.5  # the first half of the run is warm-up; "flat" is judged over the second half
RSS_EVERY = 10.0
WORKERS = 8
# Dual-stack, so that the pool the forged CREATEs drain can be small while the probes of a free
# podCIDR stay out of the allocator's reach: IPv4 is the pool (512 /28 blocks, about 220 of
# them used by the live nodes: a burst of 300 forged CREATEs exhausts it); IPv6 is wide (65,536
# /64 blocks: next-fit never reaches the probes' fd00:10:0:a000::/64 and beyond in a run).
POOL_V4 = os.environ.get("SOAK_POOL_V4", "10.240.0.0/19")
CLUSTER_V6 = "fd00:10::/48"
# IPv6 first: an IPv6-only Node (the probes, the fill nodes) is of the cluster-cidr's first family,
# which kube-controller-manager accepts (range_allocator.go occupyCIDRs pairs podCIDRs[i] with the
# i-th cluster-cidr) and so does the webhook's FamilyOrder rule; IPv4 second is still the drained pool.
CLUSTER_CIDR = f"{CLUSTER_V6},{POOL_V4}"
MASK = "28"
MASK_V6 = "64"
# Entries put through the server's bounded caches before the timed run (their bound is 4,096:
# ClusterState.DEPARTED_MAX, webhook/kube/events.py _CACHE); SOAK_FILL=0 skips it.
FILL = int(os.environ.get("SOAK_FILL", "4200"))
WITHOUT = "node-mutate admitted without podCIDR (pool exhausted, or past the pending cap)"
SETTLE_SECONDS = 120.0  # after the run: how long the assigning loop has to give every live node one
PINNED = 16  # nodes that never leave: the overlap denials point at them
NS = "flannel-guard"
OUT = Path(os.environ.get("SOAK_OUT", ROOT / "bench" / "out" / "soak.json"))


class SlowLeaseApi(FakeKubeApi):
    """The emulated API, Lease creates answered ``lease_delay`` seconds late while it is set.

    Only for the fill (:meth:`Soak.fill_caches`): registrations then wait on the API in many
    threads at once, and the server's API thread pool grows to its 32 workers, as it does
    over a long run each time a burst meets a slow API.
    """

    lease_delay = 0.0

    def _middlewares(self) -> list[Any]:
        @aiohttp.web.middleware
        async def slow(request: aiohttp.web.Request, handler: Any) -> aiohttp.web.StreamResponse:
            if self.lease_delay and request.method == "POST" and request.path.endswith("/leases"):
                await asyncio.sleep(self.lease_delay)
            return await handler(request)
        return [slow, *super()._middlewares()]


def _bad_bodies() -> list[tuple[str, bytes, str, int]]:
    """(label, body, content type, expected status) for the bad-request share of the mix."""
    envelope = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}
    return [
        ("not-json", b"{nope", "application/json", 400),
        ("wrong-content-type", b"{}", "text/plain", 415),
        ("uid-not-string", json.dumps({**envelope, "request": {
            "uid": 7, "kind": {"kind": "Node"}, "operation": "CREATE"}}).encode(),
         "application/json", 400),
        ("no-request", json.dumps(envelope).encode(), "application/json", 400),
        ("not-utf8", b"\xff\xfe{}", "application/json", 400),
    ]


class Soak:
    def __init__(self, work: Path, api: ApiThread) -> None:
        self.work = work
        self.api = api
        self.rng = random.Random(11)
        self.counts: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.samples: list[str] = []
        self.latencies: list[float] = []
        self.live: deque[str] = deque()
        self.seq = itertools.count()
        self.pinned: dict[str, str] = {}
        self.rotated_at: float | None = None
        self.new_cert_seen_at: float | None = None
        self.new_cert_der: bytes = b""
        # Nodes stored without a podCIDR (admitted while the pool was exhausted), since when.
        self.pending: dict[str, float] = {}
        self.assigned_later: list[float] = []  # seconds each waited for the assigning loop
        self.deleted_unassigned = 0
        self.duplicate_ticks = 0
        # (s, used, reserved, free) blocks of the IPv4 pool, and the connections open, from /metrics.
        self.pool_timeline: list[tuple[float, int, int, int, int]] = []
        self.pid = 0
        self.rss_timeline: list[tuple[float, int]] = []
        self.memory_timeline: list[tuple[float, int, int, int, int, int]] = []

    # -- checks ---------------------------------------------------------------------------------

    def bad(self, label: str, detail: str) -> None:
        self.unexpected[label] += 1
        if len(self.samples) < 20:
            self.samples.append(f"{label}: {detail[:300]}")

    def check_review(self, label: str, r: httpx.Response, uid: str, allowed: bool) -> dict[str, Any] | None:
        if r.status_code != 200:
            self.bad(label, f"HTTP {r.status_code} {r.text[:200]}")
            return None
        resp = r.json().get("response") or {}
        if resp.get("uid") != uid:
            self.bad(label, "uid not echoed")
            return None
        if resp.get("allowed") is not allowed:
            self.bad(label, f"allowed={resp.get('allowed')} {json.dumps(resp)[:200]}")
            return None
        return resp

    # -- one request of each kind ---------------------------------------------------------------

    async def one(self, client: httpx.AsyncClient) -> None:
        roll = self.rng.random()
        started = time.perf_counter()
        try:
            if roll < 0.30:
                await self.node_free(client)
            elif roll < 0.40:
                await self.node_overlap(client)
            elif roll < 0.60:
                await self.node_mutate(client)
            elif roll < 0.70:
                await self.configmap(client, right=True)
            elif roll < 0.80:
                await self.configmap(client, right=False)
            elif roll < 0.999:
                await self.bad_request(client)
            else:
                await self.oversized(client)
        except httpx.HTTPError as e:
            self.bad("transport", f"{type(e).__name__}: {e}")
        self.latencies.append(time.perf_counter() - started)

    async def post(self, client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
        return await client.post(path, content=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})

    async def node_free(self, client: httpx.AsyncClient) -> None:
        # fd00:10:0:a000::/64 on: inside the IPv6 cluster-cidr, beyond anything the allocator
        # hands out here (an IPv6-only Node: admitted, with a MissingFamily warning).
        i = next(self.seq)
        cidr = f"fd00:10:0:{0xa000 + i % 0x4000:x}::/64"
        body = review(node(f"probe-{i}", cidr), "CREATE", dry_run=True)
        r = await self.post(client, "/validate", body)
        if self.check_review("node-free", r, body["request"]["uid"], True) is not None:
            self.counts["node-free allowed"] += 1

    async def node_overlap(self, client: httpx.AsyncClient) -> None:
        victim, cidr = self.rng.choice(list(self.pinned.items()))
        body = review(node(f"intruder-{next(self.seq)}", cidr), "CREATE")
        r = await self.post(client, "/validate", body)
        resp = self.check_review("node-overlap", r, body["request"]["uid"], False)
        if resp is not None:
            if victim not in resp["status"]["message"]:
                self.bad("node-overlap", "denial does not name the node")
            else:
                self.counts["node-overlap denied"] += 1

    async def node_mutate(self, client: httpx.AsyncClient) -> None:
        """A Node registering: /mutate, then /validate of what it gave (the API server's order), stored.

        Expected, whatever the forged CREATEs hold: allowed, with either a patch giving one
        free /28 of the IPv4 pool and one /64 of the IPv6 range, held by no stored Node; or,
        only while the pool is exhausted (the hostile phase), no patch and the "no free
        podCIDR" warning: the Node is stored without one and the assigning loop must patch it
        later (tracked in :meth:`churn`). A denial, or a patch without podCIDRs, is unexpected.
        """
        name = f"churn-{next(self.seq):06d}"
        body = review(node(name), "CREATE")
        r = await self.post(client, "/mutate", body)
        resp = self.check_review("node-mutate", r, body["request"]["uid"], True)
        if resp is None:
            return
        cidrs: list[str] = []
        if "patch" in resp:
            ops = json.loads(base64.b64decode(resp["patch"]))
            cidrs = next((o["value"] for o in ops if o["path"] == "/spec/podCIDRs"), [])
            problem = _wrong_cidrs(cidrs)
            if problem:
                self.bad("node-mutate", f"{name}: {problem}")
                return
            holders = self.holders(cidrs)
            if holders:
                self.bad("duplicate-cidr", f"{name} got {cidrs}, held by {holders[:3]}")
                return
        else:
            warnings = resp.get("warnings") or []
            # Past the pool or the cap on pending claims (issue 28) that the forged load fills.
            if not HOSTILE or not any("no free podCIDR" in w or "no podCIDR assigned" in w for w in warnings):
                self.bad("node-mutate", f"{name}: no patch: {warnings}")
                return
        vbody = review(node(name, *cidrs), "CREATE")
        r = await self.post(client, "/validate", vbody)
        if self.check_review("node-mutate-validate", r, vbody["request"]["uid"], True) is None:
            return
        await self.api.acall(self.api.api.put_node(api_node(name, *cidrs)))
        self.live.append(name)
        if cidrs:
            self.counts["node-mutate patched"] += 1
        else:
            self.counts[WITHOUT] += 1
            self.pending[name] = time.monotonic()

    def holders(self, cidrs: list[str]) -> list[str]:
        nets = [ipaddress.ip_network(c) for c in cidrs]
        return [n for n, o in self.soak_api_nodes() if any(
            ipaddress.ip_network(c).overlaps(net) for c in o for net in nets
            if ipaddress.ip_network(c).version == net.version)]

    def soak_api_nodes(self) -> list[tuple[str, list[str]]]:
        return [(n, list((o.get("spec") or {}).get("podCIDRs") or [])) for n, o in
                list(self.api.api.nodes.items())]

    async def configmap(self, client: httpx.AsyncClient, *, right: bool) -> None:
        conf = net_conf(Network=POOL_V4, EnableIPv6=True, IPv6Network=CLUSTER_V6) if right else \
            net_conf(Network="10.244.0.0/16", EnableIPv6=True, IPv6Network=CLUSTER_V6)
        body = review(flannel_configmap(conf), "CREATE")
        r = await self.post(client, "/validate", body)
        if self.check_review(f"configmap-{'right' if right else 'wrong'}", r, body["request"]["uid"],
                             right) is not None:
            self.counts[f"configmap {'allowed' if right else 'denied'}"] += 1

    async def bad_request(self, client: httpx.AsyncClient) -> None:
        label, body, ctype, status = self.rng.choice(_bad_bodies())
        r = await client.post(self.rng.choice(["/validate", "/mutate"]), content=body,
                              headers={"Content-Type": ctype})
        if r.status_code != status or "error" not in r.json():
            self.bad(label, f"HTTP {r.status_code} {r.text[:200]}")
        else:
            self.counts[f"bad {status}"] += 1

    async def oversized(self, client: httpx.AsyncClient) -> None:
        r = await client.post("/validate", content=b" " * (8 * 1024 * 1024),
                              headers={"Content-Type": "application/json"})
        if r.status_code != 413:
            self.bad("oversized", f"HTTP {r.status_code}")
        else:
            self.counts["bad 413"] += 1

    # -- background: churn, watch drops, rotation probe -----------------------------------------

    def follow_pending(self) -> None:
        """Nodes stored without a podCIDR: patched by the assigning loop since, or deleted first."""
        now = time.monotonic()
        for name, since in list(self.pending.items()):
            stored = self.api.api.nodes.get(name)
            if stored is None:
                self.deleted_unassigned += 1
            elif (stored.get("spec") or {}).get("podCIDRs"):
                problem = _wrong_cidrs(stored["spec"]["podCIDRs"])
                if problem:
                    self.bad("assigned-later", f"{name}: {problem}")
                self.assigned_later.append(now - since)
            else:
                continue
            del self.pending[name]

    def check_duplicates(self) -> None:
        """Two stored Nodes with one podCIDR, at any moment of the run (not only at its end)."""
        seen: dict[str, str] = {}
        for name, cidrs in self.soak_api_nodes():
            for c in cidrs:
                if c in seen:
                    self.duplicate_ticks += 1
                    self.bad("duplicate-cidr", f"{c} held by {seen[c]} and {name}")
                    return
                seen[c] = name

    async def churn(self, stop: asyncio.Event) -> None:
        ticks = 0
        while not stop.is_set():
            await asyncio.sleep(0.5)
            ticks += 1
            self.follow_pending()
            self.check_duplicates()
            while len(self.live) > LIVE:
                gone = self.live.popleft()
                if gone in self.pending and (
                        (self.api.api.nodes.get(gone) or {}).get("spec") or {}).get("podCIDRs"):
                    self.follow_pending()  # patched just now: count it as assigned, not deleted
                await self.api.acall(self.api.api.delete_node(gone))
                self.counts["nodes deleted"] += 1
            if ticks % 120 == 0:
                self.api.loop.call_soon_threadsafe(self.api.api.drop_watches)
                self.counts["watch drops"] += 1

    async def sample_pool(self, url: str, ctx: ssl.SSLContext, started: float) -> None:
        """The IPv4 pool's blocks (used, reserved, free) from /metrics every 5 s: the pressure."""
        async with httpx.AsyncClient(base_url=url, verify=ctx, timeout=30) as scraper:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    text = (await scraper.get("/metrics")).text
                    blocks = _pool_blocks(text)
                    conns = next((int(float(line.split()[1])) for line in text.splitlines()
                                  if line.startswith("flannel_guard_connections_open ")), -1)
                    self.pool_timeline.append((round(time.monotonic() - started, 1), blocks.get("used", -1),
                                               blocks.get("reserved", -1), blocks.get("free", -1), conns))
                await asyncio.sleep(5.0)

    async def probe(self, port: int, ctx: ssl.SSLContext, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(1.0)
            if self.rotated_at is None or self.new_cert_seen_at is not None:
                continue
            try:
                der = await asyncio.to_thread(_peer_cert, port, ctx)
            except OSError:
                # Under the bare-connect flood the connection cap evicts connections that have
                # not sent a request yet, oldest first: this probe is one of them at times.
                self.counts["rotation probe: fresh connection evicted"] += 1
                continue
            if der == self.new_cert_der:
                self.new_cert_seen_at = time.monotonic()

    # -- the run ---------------------------------------------------------------------------------

    async def fill_caches(self, url: str, ctx: ssl.SSLContext) -> dict[str, Any]:
        """Before the timed run: the server's bounded caches filled to their bound, as a long run would.

        Found by the RSS split: what grew after the soak's first half was caches of 4,096
        entries filling (``ClusterState.departed``: recently deleted Nodes; the
        ``EventRecorder``'s aggregation and rate-limit maps: one entry per node an Event
        names, forged names included; 3.5 MiB together when full, measured with tracemalloc)
        and the API thread pool growing to its 32 workers under bursts. At this soak's rates
        the caches fill after about 440 s and 1,050 s, beyond the half a 600 s run can judge.
        So: ``FILL`` Nodes with an IPv6 podCIDR (beyond both the allocator's and the probes'
        reach) created in the API and deleted again, and ``FILL`` Node CREATEs to /mutate with
        names that never become Nodes (the drain's kind, 64 at a time against Lease creates made
        200 ms slow, :class:`SlowLeaseApi`: the pool exhausts, each gets an Event, the API
        thread pool grows to its bound), then a wait until the server has freed their
        reservations.
        """
        out: dict[str, Any] = {"rss_before_kib": rss_kib(self.pid)}
        started = time.monotonic()
        names = [f"fill-{i:05d}" for i in range(FILL)]
        for i, name in enumerate(names):
            await self.api.acall(self.api.api.put_node(api_node(name, f"fd00:10:0:{0xe000 + i:x}::/64")))
        async with httpx.AsyncClient(base_url=url, verify=ctx, timeout=60,
                                     limits=httpx.Limits(max_connections=64)) as client:
            async def gauge(cidr: str, state: str) -> int:
                return _pool_blocks((await client.get("/metrics")).text, cidr).get(state, -1)

            async def until(check: Any, limit: float) -> bool:
                end = time.monotonic() + limit
                while time.monotonic() < end:
                    if await check():
                        return True
                    await asyncio.sleep(0.5)
                return False

            async def seen() -> bool:
                return await gauge(CLUSTER_V6, "used") >= FILL

            async def forgotten() -> bool:
                return await gauge(CLUSTER_V6, "used") == 0

            out["nodes_seen"] = await until(seen, 120)
            for name in names:
                await self.api.acall(self.api.api.delete_node(name))
            out["nodes_deleted_seen"] = await until(forgotten, 120)
            outcomes: Counter[str] = Counter()
            queue = iter(range(FILL))
            self.api.api.lease_delay = 0.2  # type: ignore[attr-defined]

            async def register() -> None:
                for i in queue:
                    body = review(node(f"fill-forged-{i:05d}"), "CREATE")
                    try:
                        r = await self.post(client, "/mutate", body)
                        resp = r.json().get("response") or {}
                        outcomes["patched" if "patch" in resp else "no podCIDR" if resp.get("allowed")
                                 else "denied"] += 1
                    except httpx.HTTPError as e:
                        outcomes[type(e).__name__] += 1

            await asyncio.gather(*(register() for _ in range(64)))
            self.api.api.lease_delay = 0.0  # type: ignore[attr-defined]
            out["forged_registrations"] = dict(outcomes)

            async def freed() -> bool:
                return await gauge(POOL_V4, "reserved") == 0

            out["reservations_freed"] = await until(freed, 120)
        out["seconds"] = round(time.monotonic() - started, 1)
        out["rss_after_kib"] = rss_kib(self.pid)
        out["threads_after"] = _memory_parts(self.pid)[3]
        return out

    async def load(self, url: str, ctx: ssl.SSLContext, port: int, bundle_b: certs.CertBundle) -> float:
        stop = asyncio.Event()
        deadline = time.monotonic() + SECONDS
        half = time.monotonic() + SECONDS / 2
        interval = WORKERS / RPS
        limits = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=WORKERS)
        async with httpx.AsyncClient(base_url=url, verify=ctx, timeout=30, limits=limits) as client:
            async def worker(k: int) -> None:
                next_at = time.monotonic() + k * interval / WORKERS
                while time.monotonic() < deadline:
                    await self.one(client)
                    next_at += interval
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))

            async def rotate() -> None:
                await asyncio.sleep(max(0.0, half - time.monotonic()))
                self.new_cert_der = ssl.PEM_cert_to_DER_cert(bundle_b.cert_pem.decode())
                # As a Secret volume update: each file replaced atomically (rename).
                certs.write_bundle(bundle_b, self.work)
                self.rotated_at = time.monotonic()

            async def sample_rss() -> None:
                # RSS over time: growth that levels off is warm-up; a steady climb is a leak.
                while True:
                    at = round(time.monotonic() - started, 1)
                    self.rss_timeline.append((at, rss_kib(self.pid)))
                    self.memory_timeline.append((at, *_memory_parts(self.pid)))
                    if TRACE and at >= SECONDS * WARMUP - RSS_EVERY:  # the first one starts tracing
                        os.kill(self.pid, signal.SIGUSR1)  # bench/traced_serve.py
                    await asyncio.sleep(RSS_EVERY)

            started = time.monotonic()
            side = [asyncio.create_task(self.churn(stop)), asyncio.create_task(self.probe(port, ctx, stop)),
                    asyncio.create_task(rotate()), asyncio.create_task(sample_rss()),
                    asyncio.create_task(self.sample_pool(url, ctx, started))]
            await asyncio.gather(*(worker(k) for k in range(WORKERS)))
            stop.set()
            for task in side:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            return time.monotonic() - started


def _peer_cert(port: int, ctx: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return tls.getpeercert(binary_form=True) or b""


def _settle(soak: Soak) -> dict[str, Any]:
    """After the run (attacker stopped): wait until every live real node has a podCIDR, or say who not."""
    started = time.monotonic()
    at_end = sum(1 for n, c in soak.soak_api_nodes() if n.startswith("churn-") and not c)
    while True:
        soak.follow_pending()
        missing = [n for n, c in soak.soak_api_nodes() if n.startswith("churn-") and not c]
        if not missing or time.monotonic() - started > SETTLE_SECONDS:
            break
        time.sleep(0.5)
    soak.check_duplicates()
    return {"live_real_nodes_without_podcidr_at_end_of_load": at_end,
            "settle_s": round(time.monotonic() - started, 1),
            "live_real_nodes_without_podcidr_after_settle": len(missing),
            "without_podcidr_sample": missing[:5]}


def _pool_summary(timeline: list[tuple[float, int, int, int, int]]) -> dict[str, Any]:
    """How hard the forged reservations pressed on the IPv4 pool (from the /metrics gauges)."""
    frees = [row[3] for row in timeline if row[3] >= 0]
    reserved = [row[2] for row in timeline if row[2] >= 0]
    return {
        "cidr": POOL_V4, "capacity_blocks": ipaddress.IPv4Network(POOL_V4).num_addresses >> (32 - int(MASK)),
        "samples": len(frees),
        "free_min": min(frees, default=None), "free_median": int(_percentile(frees, 0.5)) if frees else None,
        "free_max": max(frees, default=None),
        "share_of_samples_exhausted": round(sum(f == 0 for f in frees) / len(frees), 3) if frees else None,
        "reserved_max": max(reserved, default=None),
        "timeline": {"columns": ["s", "used", "reserved", "free", "connections_open"], "rows": timeline},
    }


def _wrong_cidrs(cidrs: list[str]) -> str:
    """Why ``cidrs`` are not what a Node of this soak should get ("" when they are)."""
    try:
        nets = [ipaddress.ip_network(c) for c in cidrs]
    except ValueError as e:
        return f"not CIDRs: {cidrs} ({e})"
    v4 = [n for n in nets if n.version == 4]
    v6 = [n for n in nets if n.version == 6]
    if len(v4) != 1 or len(v6) != 1 or nets[0].version != 6:
        return f"not one IPv6 then one IPv4 (the cluster-cidr's order): {cidrs}"
    if not (v4[0].prefixlen == int(MASK) and v4[0].subnet_of(ipaddress.IPv4Network(POOL_V4))):
        return f"{v4[0]} is not a /{MASK} of {POOL_V4}"
    if not (v6[0].prefixlen == int(MASK_V6) and v6[0].subnet_of(ipaddress.IPv6Network(CLUSTER_V6))):
        return f"{v6[0]} is not a /{MASK_V6} of {CLUSTER_V6}"
    return ""


def _pool_blocks(metrics_text: str, cidr: str = POOL_V4) -> dict[str, int]:
    """``flannel_guard_pool_blocks`` of ``cidr`` (the IPv4 pool) by state, from a /metrics text."""
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith("flannel_guard_pool_blocks{") and f'cluster_cidr="{cidr}"' in line:
            state = line.split('state="', 1)[1].split('"', 1)[0]
            out[state] = int(float(line.rsplit(maxsplit=1)[1]))
    return out


#: "Flat": the least-squares slope of RSS over the second half, plus twice its standard error,
#: below this. At 64 KiB/min a server at 150 MiB would need more than 27 hours of the same
#: load to reach the 256 MiB limit of the manifests; a leak proportional to the traffic (the
#: issue's were megabytes a minute) shows far above it.
FLAT_KIB_PER_MIN = 64.0


def rss_verdict(timeline: list[tuple[float, int]], seconds: float) -> dict[str, Any]:
    """RSS after the warm-up (the first half) and its slope over the rest: measured, target, met."""
    rest = [(t / 60, float(r)) for t, r in timeline if t >= seconds * WARMUP]
    if len(rest) < 3:
        return {"met": None, "why": "fewer than 3 samples after the warm-up"}
    n = len(rest)
    mt = sum(t for t, _ in rest) / n
    mr = sum(r for _, r in rest) / n
    sxx = sum((t - mt) ** 2 for t, _ in rest)
    slope = sum((t - mt) * (r - mr) for t, r in rest) / sxx
    resid = sum((r - (mr + slope * (t - mt))) ** 2 for t, r in rest)
    stderr = (resid / (n - 2) / sxx) ** 0.5
    return {
        "warmup_s": round(seconds * WARMUP, 1),
        "rss_after_warmup_kib": int(rest[0][1]),
        "rss_end_kib": int(rest[-1][1]),
        "rss_max_after_warmup_kib": int(max(r for _, r in rest)),
        "samples": n,
        "slope_kib_per_min": round(slope, 1),
        "slope_stderr_kib_per_min": round(stderr, 1),
        "target_kib_per_min": FLAT_KIB_PER_MIN,
        "criterion": "slope + 2 stderr over the second half < target",
        "met": slope + 2 * stderr < FLAT_KIB_PER_MIN,
    }


def _memory_parts(pid: int) -> tuple[int, int, int, int, int]:
    """(heap, anonymous, file-backed) resident KiB, threads and open fds of ``pid``, from /proc.

    glibc's main arena grows the ``[heap]`` (brk); each thread's arena, and every allocation
    above the mmap threshold, is an anonymous mapping: the split says which one grew.
    """
    heap = anon = files = 0
    kind = "anon"
    try:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            head = line.split(maxsplit=6)
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                path = head[5] if len(head) > 5 else ""
                kind = "heap" if path == "[heap]" else "anon" if not path or path.startswith("[anon") \
                    else "other" if path.startswith("[") else "file"
            elif line.startswith("Rss:"):
                kib = int(line.split()[1])
                if kind == "heap":
                    heap += kib
                elif kind == "anon":
                    anon += kib
                elif kind == "file":
                    files += kib
        threads = next(int(x.split()[1]) for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if x.startswith("Threads:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return 0, 0, 0, 0, 0
    return heap, anon, files, threads, fds


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flannel-guard-soak-") as tmp:
        work = Path(tmp)
        bundle_a = certs.generate("flannel-guard", NS, days=1, extra_ips=["127.0.0.1"])
        bundle_b = certs.generate("flannel-guard", NS, days=1, extra_ips=["127.0.0.1"])
        certs.write_bundle(bundle_a, work)
        # The caBundle during a rotation holds the old and the new CA.
        ctx = ssl.create_default_context(cadata=(bundle_a.ca_cert_pem + bundle_b.ca_cert_pem).decode())
        soak = Soak(work, ApiThread(SlowLeaseApi(keep_requests=False)))
        for i in range(PINNED):
            cidr = f"{ipaddress.IPv4Network(POOL_V4).network_address + i * 16}/28"
            soak.pinned[f"pinned-{i:02d}"] = cidr  # the first 16 blocks of the IPv4 pool
            soak.api.call(soak.api.api.put_node(api_node(f"pinned-{i:02d}", cidr)))
        port = free_port()
        log_path = work / "server.log"
        trace_dir = work / "trace"
        runner = [str(ROOT / "bench" / "traced_serve.py"), str(trace_dir)] if TRACE else ["-m", "webhook"]
        cmd = [sys.executable, *runner, "serve", "--kubeconfig",
               str(kubeconfig_file(work / "kubeconfig", soak.api.api.url)), "--port", str(port),
               "--tls-cert", str(work / "tls.crt"), "--tls-key", str(work / "tls.key"),
               "--cluster-cidr", CLUSTER_CIDR, "--node-cidr-mask-size", MASK,
               "--node-cidr-mask-size-ipv6", MASK_V6, "--reservation-grace", "30",
               "--cert-reload-interval", "2"]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, env={**os.environ, "POD_NAMESPACE": NS},
                                    stdout=subprocess.DEVNULL, stderr=log)
        url = f"https://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise SystemExit(log_path.read_text()[-2000:])
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/readyz", verify=ctx, timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("server not ready")
                time.sleep(0.1)
            rss_start = rss_kib(proc.pid)
            soak.pid = proc.pid
            fill: dict[str, Any] = {}
            if FILL:
                print(f"soak: filling the server's caches ({FILL} nodes, {FILL} forged registrations)",
                      file=sys.stderr)
                fill = asyncio.run(soak.fill_caches(url, ctx))
            attacker = None
            if HOSTILE:
                (work / "ca-both.crt").write_bytes(bundle_a.ca_cert_pem + bundle_b.ca_cert_pem)
                attacker = subprocess.Popen([sys.executable, str(ROOT / "bench" / "attacker.py"), str(port),
                                             str(work / "ca-both.crt"), str(work / "attacker.json")])
            print(f"soak: {SECONDS:.0f} s at {RPS:.0f} req/s against pid {proc.pid}"
                  f"{' with the hostile phase' if HOSTILE else ''}", file=sys.stderr)
            try:
                wall = asyncio.run(soak.load(url, ctx, port, bundle_b))
            finally:
                if attacker is not None:
                    attacker.terminate()
                    attacker.wait(120)
            rss_end = rss_kib(proc.pid)
            alive = proc.poll() is None
            trace_growth: list[str] = []
            if TRACE:
                snaps = sorted(trace_dir.glob("snap-*.done"))
                if len(snaps) >= 2:
                    from traced_serve import diff  # bench/ is on sys.path as the script's folder
                    trace_growth = diff(snaps[0].with_suffix(".pickle"), snaps[-1].with_suffix(".pickle"))
            settle = _settle(soak) if alive else {}
            closed = {}
            with contextlib.suppress(httpx.HTTPError):
                text = httpx.get(f"{url}/metrics", verify=ctx, timeout=10).text
                settle["pool_blocks_after_settle"] = _pool_blocks(text)
                for line in text.splitlines():
                    if line.startswith(("flannel_guard_connections_closed_total",
                                        "flannel_guard_bad_requests_total")):
                        closed[line.split()[0]] = float(line.split()[1])
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        nodes = soak.soak_api_nodes()
        owned: dict[str, str] = {}
        duplicates = 0
        for name, cidrs in nodes:
            for c in cidrs:
                duplicates += c in owned
                owned[c] = name
        log_bytes = log_path.stat().st_size
        log_text = log_path.read_bytes()
        served = sum(v for k, v in soak.counts.items() if not k.startswith(("nodes ", "watch ", "rotation ")))
        result = {
            "seconds": round(wall, 1),
            "target_rps": RPS,
            "requests": len(soak.latencies),
            "requests_answered_as_expected": served,
            "achieved_rps": round(len(soak.latencies) / wall, 1),
            "by_outcome": dict(sorted(soak.counts.items())),
            "unexpected": sum(soak.unexpected.values()),
            "unexpected_by_kind": dict(soak.unexpected),
            "unexpected_samples": soak.samples,
            "latency_ms": {"p50": round(_percentile(soak.latencies, 0.5) * 1000, 2),
                           "p99": round(_percentile(soak.latencies, 0.99) * 1000, 2),
                           "max": round(max(soak.latencies, default=0) * 1000, 2)},
            "rss_kib": {"start": rss_start, "end": rss_end},
            "caches_filled_before_the_run": fill or None,
            "rss_kib_timeline": soak.rss_timeline,
            "rss_flat": rss_verdict(soak.rss_timeline, wall),
            "memory_kib_timeline": {"columns": ["s", "heap", "anon", "file", "threads", "fds"],
                                    "rows": soak.memory_timeline},
            "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
            "tracemalloc_growth_after_warmup": trace_growth if TRACE else None,
            "cert_rotation": {
                "rotated_at_s": None if soak.rotated_at is None else round(SECONDS / 2, 1),
                "new_cert_served_after_s": None if soak.new_cert_seen_at is None or soak.rotated_at is None
                else round(soak.new_cert_seen_at - soak.rotated_at, 2),
            },
            "nodes_live_at_end": len(nodes),
            "duplicate_cidrs_among_live_nodes": duplicates,
            "real_nodes": {
                "patched_at_registration": soak.counts["node-mutate patched"],
                "admitted_without_podcidr": soak.counts[WITHOUT],
                "of_those_patched_later_by_the_assigning_loop": len(soak.assigned_later),
                "of_those_deleted_by_the_churn_before_a_patch": soak.deleted_unassigned,
                "wait_for_the_assigning_loop_s": {
                    "p50": round(_percentile(soak.assigned_later, 0.5), 1),
                    "p99": round(_percentile(soak.assigned_later, 0.99), 1),
                    "max": round(max(soak.assigned_later, default=0), 1)},
                "ticks_with_a_duplicate_podcidr": soak.duplicate_ticks,
                **settle,
            },
            "pool_v4": _pool_summary(soak.pool_timeline),
            "leases_at_end": len(soak.api.api.leases),
            "server_alive_at_end": alive,
            "hostile": None if not HOSTILE else {
                "attacker": json.loads((work / "attacker.json").read_text())
                if (work / "attacker.json").exists() else "no report",
                "server_counters": closed,
            },
            "server_log_bytes": log_bytes,
            "server_log_tracebacks": log_text.count(b"Traceback"),
            "server_log_sha256": hashlib.sha256(log_text).hexdigest()[:16],
        }
        soak.api.close()
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    flat = result["rss_flat"]
    if flat.get("met") is not None:
        print(f"soak: RSS {flat['rss_after_warmup_kib']} KiB after the {flat['warmup_s']:.0f} s warm-up,"
              f" {flat['rss_end_kib']} KiB at the end; slope {flat['slope_kib_per_min']:+.1f}"
              f" ± {flat['slope_stderr_kib_per_min']:.1f} KiB/min, target < {FLAT_KIB_PER_MIN:.0f}:"
              f" {'flat (met)' if flat['met'] else 'NOT shown flat (not met)'}", file=sys.stderr)
    return 0 if result["unexpected"] == 0 and alive else 1


if __name__ == "__main__":
    raise SystemExit(main())

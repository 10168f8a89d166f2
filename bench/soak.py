"""The soak: a server process in cluster mode under a steady, mixed load for SOAK_SECONDS (600).

``make soak`` (``python bench/soak.py``). One ``flannel-guard serve --kubeconfig``
process against :class:`FakeKubeApi` on loopback (``keep_requests=False``), and
in this process:

* a steady load (``SOAK_RPS``, 100 by default) of AdmissionReviews: Nodes
  with a free podCIDR (admitted), Nodes overlapping a pinned node (denied),
  Nodes without a podCIDR on /mutate (a patch: the node then joins the API),
  the flannel ConfigMap right (admitted) and wrong (denied), and bad requests
  (not JSON, wrong content type, a ``uid`` that is not a string, no request,
  an oversized body: 4xx);
* node churn: every node admitted through /mutate is created in the API, and
  the oldest are deleted so that about ``SOAK_LIVE`` (200) live at any time;
  the watch is dropped once a minute;
* a certificate rotation at half time: a new pair is written over tls.crt /
  tls.key atomically (as a Secret volume update), the client trusts both CAs,
  and a probe opens a fresh TLS connection every second to see when the new
  certificate is served;
* the hostile phase (``SOAK_HOSTILE=0`` turns it off), for the whole run, in a
  process of its own (``bench/attacker.py``): bare connects past the connection
  cap, slowloris connections, held 7 MiB bodies and forged reviews (issue 15).
  The normal load must still get only expected answers, and RSS stay flat.

Every response is checked against what its request should get; anything else
is counted as unexpected (with a few samples). Writes ``bench/out/soak.json``.
Measured, not asserted: not part of ``make test``.
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

import httpx  # noqa: E402
from conftest import flannel_configmap, net_conf, node, review  # noqa: E402
from kube_emulator import ApiThread, free_port, kubeconfig_file, rss_kib  # noqa: E402
from kube_emulator import node as api_node  # noqa: E402

from webhook.service import certs  # noqa: E402

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
RPS = float(os.environ.get("SOAK_RPS", "100"))
LIVE = int(os.environ.get("SOAK_LIVE", "200"))
HOSTILE = os.environ.get("SOAK_HOSTILE", "1") != "0"
WORKERS = 8
CLUSTER_CIDR = "10.240.0.0/12"
MASK = "28"  # 65,536 node CIDRs: next-fit never reaches the probes' 10.250.0.0/16
PINNED = 16  # nodes that never leave: the overlap denials point at them
NS = "flannel-guard"
OUT = ROOT / "bench" / "out" / "soak.json"


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
        self.reservation_warnings = 0
        self.pid = 0
        self.rss_timeline: list[tuple[float, int]] = []

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
        # 10.250.0.0/16: inside the cluster-cidr, beyond anything the allocator hands out here.
        i = next(self.seq)
        cidr = f"10.250.{i % 256}.{(i // 256) % 16 * 16}/28"
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
        name = f"churn-{next(self.seq):06d}"
        obj = node(name)
        body = review(obj, "CREATE")
        r = await self.post(client, "/mutate", body)
        resp = self.check_review("node-mutate", r, body["request"]["uid"], True)
        if resp is None:
            return
        if "patch" not in resp:
            # Allowed without a podCIDR: a reservation could not be written (not expected here).
            self.reservation_warnings += 1
            self.bad("node-mutate", f"no patch: {resp.get('warnings')}")
            return
        ops = json.loads(base64.b64decode(resp["patch"]))
        cidr = next(o["value"] for o in ops if o["path"] == "/spec/podCIDR")
        net = ipaddress.ip_network(cidr)
        holders = [n for n, o in self.soak_api_nodes() if any(
            ipaddress.ip_network(c).overlaps(net) for c in o)]
        if holders:
            self.bad("duplicate-cidr", f"{name} got {cidr}, held by {holders[:3]}")
            return
        self.counts["node-mutate patched"] += 1
        await self.api.acall(self.api.api.put_node(api_node(name, cidr)))
        self.live.append(name)

    def soak_api_nodes(self) -> list[tuple[str, list[str]]]:
        return [(n, list((o.get("spec") or {}).get("podCIDRs") or [])) for n, o in
                list(self.api.api.nodes.items())]

    async def configmap(self, client: httpx.AsyncClient, *, right: bool) -> None:
        network = CLUSTER_CIDR if right else "10.244.0.0/16"
        body = review(flannel_configmap(net_conf(Network=network)), "CREATE")
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

    async def churn(self, stop: asyncio.Event) -> None:
        ticks = 0
        while not stop.is_set():
            await asyncio.sleep(0.5)
            ticks += 1
            while len(self.live) > LIVE:
                await self.api.acall(self.api.api.delete_node(self.live.popleft()))
                self.counts["nodes deleted"] += 1
            if ticks % 120 == 0:
                self.api.loop.call_soon_threadsafe(self.api.api.drop_watches)
                self.counts["watch drops"] += 1

    async def probe(self, port: int, ctx: ssl.SSLContext, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(1.0)
            if self.rotated_at is None or self.new_cert_seen_at is not None:
                continue
            der = await asyncio.to_thread(_peer_cert, port, ctx)
            if der == self.new_cert_der:
                self.new_cert_seen_at = time.monotonic()

    # -- the run ---------------------------------------------------------------------------------

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
                    self.rss_timeline.append((round(time.monotonic() - started, 1), rss_kib(self.pid)))
                    await asyncio.sleep(max(5.0, SECONDS / 20))

            started = time.monotonic()
            side = [asyncio.create_task(self.churn(stop)), asyncio.create_task(self.probe(port, ctx, stop)),
                    asyncio.create_task(rotate()), asyncio.create_task(sample_rss())]
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
        soak = Soak(work, ApiThread())
        for i in range(PINNED):
            cidr = f"10.246.0.{i * 16}/28"
            soak.pinned[f"pinned-{i:02d}"] = cidr
            soak.api.call(soak.api.api.put_node(api_node(f"pinned-{i:02d}", cidr)))
        port = free_port()
        log_path = work / "server.log"
        cmd = [sys.executable, "-m", "webhook", "serve", "--kubeconfig",
               str(kubeconfig_file(work / "kubeconfig", soak.api.api.url)), "--port", str(port),
               "--tls-cert", str(work / "tls.crt"), "--tls-key", str(work / "tls.key"),
               "--cluster-cidr", CLUSTER_CIDR, "--node-cidr-mask-size", MASK, "--reservation-grace", "30",
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
            closed = {}
            with contextlib.suppress(httpx.HTTPError):
                for line in httpx.get(f"{url}/metrics", verify=ctx, timeout=10).text.splitlines():
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
        served = sum(v for k, v in soak.counts.items() if not k.startswith(("nodes ", "watch ")))
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
            "rss_kib_timeline": soak.rss_timeline,
            "cert_rotation": {
                "rotated_at_s": None if soak.rotated_at is None else round(SECONDS / 2, 1),
                "new_cert_served_after_s": None if soak.new_cert_seen_at is None or soak.rotated_at is None
                else round(soak.new_cert_seen_at - soak.rotated_at, 2),
            },
            "nodes_live_at_end": len(nodes),
            "duplicate_cidrs_among_live_nodes": duplicates,
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
    return 0 if result["unexpected"] == 0 and alive else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Faults around the process: SIGTERM under load, an API restarting and failing writes, a new certificate."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import os
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import flannel_configmap, net_conf, node, review
from kube_emulator import ApiThread, FakeKubeApi
from kube_emulator import node as api_node
from server_process import ServerProcess, serve
from test_replicas import replicas

from webhook.core.constants import NAMESPACE, SERVICE
from webhook.service import certs

# --- graceful shutdown ------------------------------------------------------------------------


def _raw_request(body: bytes) -> tuple[bytes, bytes]:
    head = (f"POST /validate HTTP/1.1\r\nHost: {SERVICE}.{NAMESPACE}.svc\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head, body


def _read_response(sock: ssl.SSLSocket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a response"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(v) for k, _, v in (line.partition(b":") for line in lines[1:])
                  if k.strip().lower() == b"content-length")
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-response"
        rest += chunk
    return int(lines[0].split()[1]), json.loads(rest[:length])


def test_sigterm_turns_readiness_false_finishes_in_flight_requests_and_exits(tmp_path: Path) -> None:
    """In-flight requests (large objects arriving slowly) are answered; the process exits in the grace period.

    The slow path is a real one: the API server sending a large object over a slow link.
    """
    with serve(tmp_path, "--shutdown-delay", "1.0") as running:
        cm = flannel_configmap(net_conf(), **{"blob": "b" * 400_000})
        bodies = [review(cm, "CREATE", dry_run=True) for _ in range(3)]
        ctx = running.context()
        socks: list[ssl.SSLSocket] = []
        for body in bodies:
            raw = socket.create_connection(("127.0.0.1", running.port), timeout=30)
            sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            head, data = _raw_request(json.dumps(body).encode())
            sock.sendall(head + data[: len(data) // 2])
            socks.append(sock)
        time.sleep(0.2)
        sent_at = time.monotonic()
        running.proc.send_signal(signal.SIGTERM)

        # Readiness goes false at once, while the port still answers (the shutdown delay).
        time.sleep(0.2)
        assert httpx.get(f"{running.url}/readyz", verify=ctx, timeout=5).status_code == 503
        # The rest of each body trickles in over ~2 s: past the delay, when accepting has stopped.
        rest = [json.dumps(b).encode()[len(json.dumps(b).encode()) // 2:] for b in bodies]
        step = 20_000
        for offset in range(0, max(map(len, rest)), step):
            for sock, data in zip(socks, rest, strict=True):
                if offset < len(data):
                    sock.sendall(data[offset: offset + step])
            time.sleep(0.2)
            if time.monotonic() - sent_at > 1.6:
                with pytest.raises(httpx.ConnectError):
                    httpx.get(f"{running.url}/healthz", verify=ctx, timeout=2)
        for sock, body in zip(socks, bodies, strict=True):
            status, doc = _read_response(sock)
            assert status == 200 and doc["response"]["uid"] == body["request"]["uid"]
            sock.close()
        running.proc.wait(20)
        assert time.monotonic() - sent_at < 20  # uvicorn's bound; the pod's grace is 30 s
        assert running.proc.returncode in (0, -signal.SIGTERM)


# --- the API restarting, the watch dropped, Lease writes failing -----------------------------


def _cidr(resp: dict) -> ipaddress.IPv4Network | None:
    if not resp["allowed"] or "patch" not in resp:
        return None
    ops = json.loads(base64.b64decode(resp["patch"]))
    return ipaddress.ip_network(next(o["value"] for o in ops if o["path"] == "/spec/podCIDR"))


async def _admit(api: ApiThread, urls: list[str], ca: Path, names: list[str],
                 during: list[tuple[int, str]] = ()) -> dict[str, ipaddress.IPv4Network | None]:
    """Admit nodes on both replicas, 4 at a time; each admitted node is then created in the API.

    ``during``: faults, each once the given number of admissions have been answered (events,
    not timers: the same faults meet the same stretch of the run however loaded the machine is).
    """
    got: dict[str, ipaddress.IPv4Network | None] = {}
    ctx = ssl.create_default_context(cafile=str(ca))
    sem = asyncio.Semaphore(4)
    answered = 0
    pending = sorted(during)

    async def fault(what: str) -> None:
        if what == "drop":
            api.loop.call_soon_threadsafe(api.api.drop_watches)
        elif what == "down":
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(api.api.down(), api.loop))
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(api.api.up(), api.loop))

    async with httpx.AsyncClient(verify=ctx, timeout=30) as client:
        async def one(i: int, name: str) -> None:
            nonlocal answered
            async with sem:
                body = review(node(name), "CREATE")
                r = await client.post(f"{urls[i % 2]}/mutate", json=body)
                assert r.status_code == 200
                resp = r.json()["response"]
                assert resp["uid"] == body["request"]["uid"]
                assert resp["allowed"] is True
                got[name] = cidr = _cidr(resp)
                # The API server stores the Node as admitted (with the patch, if any), unless it is down.
                obj = api_node(name, str(cidr)) if cidr else api_node(name)
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(api.api.put_node(obj), api.loop))
                answered += 1
                while pending and pending[0][0] <= answered:
                    await fault(pending.pop(0)[1])

        await asyncio.gather(*(one(i, n) for i, n in enumerate(names)))
        for _, what in pending:
            await fault(what)
    return got


def test_api_restarts_dropped_watches_and_failing_lease_writes_lose_and_double_no_cidr(
        tmp_path: Path) -> None:
    """Two replicas, 10% of Lease writes failing before and 10% after storing, the watch cut, the API down.

    Afterwards: no CIDR twice among admitted nodes; and none lost: once the
    reservations are past their grace (orphans of writes that failed halfway
    included), every CIDR that no node holds is free again, so the whole range
    ends up on stored Nodes: by admission, or by the assigning loop for the nodes
    admitted without one while the API was failing.
    """
    api = ApiThread(FakeKubeApi(keep_requests=False, lease_fail_before=0.1, lease_fail_after=0.1))
    try:
        # 10.244.0.0/22 in /28s: 64 node CIDRs.
        with replicas(tmp_path, api.api.url, "--cluster-cidr", "10.244.0.0/22", "--node-cidr-mask-size", "28",
                      "--reservation-grace", "3") as urls:
            first = asyncio.run(_admit(api, urls, tmp_path / "ca.crt", [f"a-{i:03d}" for i in range(40)],
                                       during=[(5, "drop"), (10, "down"), (16, "up"), (24, "drop")]))
            held = [c for c in first.values() if c is not None]
            assert len(held) == len(set(held)), "a CIDR was given twice"
            # Both kinds happened: nodes given a CIDR, and nodes admitted without one (API down,
            # writes failing). Roughly 3 in 4 succeed; 10 is far below any plausible count.
            assert len(held) >= 10, f"too few admissions succeeded: {len(held)}"
            assert len(held) < 40, "no fault reached an admission"
            leased = {lease["metadata"]["annotations"]["flannel-guard.io/cidr"]
                      for lease in list(api.api.claims().values())}
            orphans = leased - {str(c) for c in held}
            # Now the API behaves; wait for a reclaim pass past the grace period.
            api.api.lease_fail_before = api.api.lease_fail_after = 0.0
            deadline = time.monotonic() + 20
            while api.api.claims():
                assert time.monotonic() < deadline, f"reservations never reclaimed: {len(api.api.claims())}"
                time.sleep(0.25)
            rest = asyncio.run(_admit(api, urls, tmp_path / "ca.crt", [f"b-{i:03d}" for i in range(80)]))
            more = [c for c in rest.values() if c is not None]
            assert not set(held) & set(more), "a CIDR was given twice"

            def stored() -> list[str]:
                return [c for n in list(api.api.nodes.values()) for c in n["spec"].get("podCIDRs") or []]
            # 120 stored nodes, 64 CIDRs: the loop fills whatever admission left free.
            deadline = time.monotonic() + 60
            while len(stored()) < 64:
                assert time.monotonic() < deadline, (len(stored()), len(held), len(more), sorted(orphans))
                time.sleep(0.25)
        assert len(stored()) == len(set(stored())) == 64
        assert {str(c) for c in held + more} <= set(stored())
    finally:
        api.close()


# --- a certificate rotated on disk -------------------------------------------------------------


def _secret_volume(root: Path, bundle: certs.CertBundle, stamp: str) -> None:
    """Write tls.crt/tls.key as the kubelet updates a Secret volume: a new dir, one symlink swap."""
    data = root / f"..{stamp}"
    data.mkdir()
    (data / "tls.crt").write_bytes(bundle.cert_pem)
    (data / "tls.key").write_bytes(bundle.key_pem)
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(data.name)
    os.replace(tmp_link, root / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (root / name).is_symlink():
            (root / name).symlink_to(f"..data/{name}")


def test_a_rotated_certificate_is_served_without_restart_and_no_request_fails(tmp_path: Path) -> None:
    old = certs.generate(SERVICE, NAMESPACE, days=1, extra_ips=["127.0.0.1"])
    new = certs.generate(SERVICE, NAMESPACE, days=1, extra_ips=["127.0.0.1"])
    volume = tmp_path / "volume"
    volume.mkdir()
    _secret_volume(volume, old, "2026_01_01")
    # The caBundle during a rotation holds both CAs.
    (tmp_path / "ca.crt").write_bytes(old.ca_cert_pem + new.ca_cert_pem)
    (tmp_path / "tls.crt").write_bytes(b"unused")
    with serve(tmp_path, "--tls-cert", str(volume / "tls.crt"), "--tls-key", str(volume / "tls.key"),
               "--cert-reload-interval", "0.2") as running:
        failures: list[str] = []
        answered = [0]
        stop = threading.Event()

        def load(keep_alive: bool) -> None:
            limits = httpx.Limits(max_keepalive_connections=5 if keep_alive else 0)
            with httpx.Client(base_url=running.url, verify=running.context(), timeout=10, limits=limits) as c:
                while not stop.is_set():
                    body = review(node("worker-1", "10.244.1.0/24"), dry_run=True)
                    try:
                        r = c.post("/validate", json=body)
                        assert r.status_code == 200 and r.json()["response"]["uid"] == body["request"]["uid"]
                        answered[0] += 1
                    except (httpx.HTTPError, AssertionError) as e:
                        failures.append(repr(e))

        threads = [threading.Thread(target=load, args=(k,)) for k in (True, False, False)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            before = answered[0]
            _secret_volume(volume, new, "2026_06_01")
            want = ssl.PEM_cert_to_DER_cert(new.cert_pem.decode())
            deadline = time.monotonic() + 5
            while _served_cert(running) != want:
                assert time.monotonic() < deadline, "the new certificate was never served"
                time.sleep(0.1)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        assert not failures, failures[:5]
        assert answered[0] > before + 10
        assert running.proc.poll() is None
        assert "reloaded TLS certificate" in running.log.read_text()


def _served_cert(running: ServerProcess) -> bytes:
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as raw, \
            running.context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return tls.getpeercert(binary_form=True) or b""

"""``--probe-port``: /healthz, /readyz and /metrics over plain HTTP, apart from the webhook port.

The kubelet's httpGet probes present no client certificate, so with ``--client-ca``
on the webhook port they would fail the handshake (liveness restarts the pod,
readiness never turns true). These tests start a real ``serve`` process with
``--client-ca`` and talk to both ports over real connections on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import platform
import re
import signal
import time
from pathlib import Path

import httpx
import pytest
from conftest import node, review
from kube_emulator import ApiThread, free_port, kubeconfig_file
from kube_emulator import node as api_node
from server_process import client_pair, serve

from webhook import __version__
from webhook.core.cidrset import CidrSet
from webhook.core.constants import NAMESPACE, SERVICE
from webhook.service import certs
from webhook.service.metrics import Metrics, pool_blocks


def samples(text: str, name: str) -> dict[str, float]:
    """``{label text: value}`` of one metric in Prometheus text exposition."""
    return {labels or "": float(value)
            for labels, value in re.findall(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.M)}


def pool(text: str) -> dict[str, float]:
    return {re.search(r'state="(\w+)"', k).group(1): v  # type: ignore[union-attr]
            for k, v in samples(text, "flannel_guard_pool_blocks").items()}


@pytest.fixture
def client_ca(tmp_path: Path) -> tuple[Path, tuple[Path, Path]]:
    api_ca = certs.generate("apiserver-client", NAMESPACE, days=1)
    (tmp_path / "client-ca.crt").write_bytes(api_ca.ca_cert_pem)
    good = client_pair(tmp_path / "good", api_ca.ca_cert_pem, api_ca.ca_key_pem)
    certs.write_bundle(certs.generate(SERVICE, NAMESPACE, days=1, extra_ips=["127.0.0.1"]), tmp_path)
    return tmp_path / "client-ca.crt", good


def test_probes_and_metrics_answer_over_plain_http_while_client_ca_refuses_strangers(
        tmp_path: Path, client_ca: tuple[Path, tuple[Path, Path]]) -> None:
    ca, good = client_ca
    probe_port = free_port()
    with serve(tmp_path, "--client-ca", str(ca), "--probe-port", str(probe_port),
               "--cluster-cidr", "10.244.0.0/22", client_cert=good) as running, \
            httpx.Client(base_url=f"http://127.0.0.1:{probe_port}", timeout=10) as kubelet:
        # The kubelet's view: plain HTTP, no certificate.
        assert kubelet.get("/healthz").status_code == 200
        assert kubelet.get("/readyz").status_code == 200
        assert kubelet.post("/validate", json={}).status_code in (404, 405)  # probes only
        # ...while the webhook port still refuses a caller without a certificate.
        with httpx.Client(base_url=running.url, verify=running.context(with_cert=False),
                          timeout=5) as stranger, pytest.raises(httpx.HTTPError):
            stranger.get("/healthz")

        text = kubelet.get("/metrics").text
        assert samples(text, "flannel_guard_build_info") == {
            f'python_version="{platform.python_version()}",version="{__version__}"': 1.0}
        assert samples(text, "flannel_guard_ready") == {"": 1.0}
        assert samples(text, "flannel_guard_pool_capacity_blocks") == {
            'cluster_cidr="10.244.0.0/22",mask="24"': 4.0}
        assert pool(text) == {"used": 0, "reserved": 0, "free": 4}

        # The mutating webhook reserves a block: reserved until a Node holds it.
        api = running.client()
        patched = api.post("/mutate", json=review(node("worker-1"))).json()["response"]
        assert patched["allowed"] and patched.get("patch")
        assert pool(kubelet.get("/metrics").text) == {"used": 0, "reserved": 1, "free": 3}
        admitted = api.post("/validate", json=review(node("worker-1", "10.244.0.0/24"))).json()
        assert admitted["response"]["allowed"]
        text = kubelet.get("/metrics").text
        assert pool(text) == {"used": 1, "reserved": 0, "free": 3}
        buckets = samples(text, "flannel_guard_admission_duration_seconds_bucket")
        assert {re.search(r'le="([^"]+)"', k).group(1) for k in buckets} >= {"5.0", "10.0", "+Inf"}  # type: ignore[union-attr]


def test_probe_port_turns_unready_on_sigterm_and_keeps_liveness(
        tmp_path: Path, client_ca: tuple[Path, tuple[Path, Path]]) -> None:
    """SIGTERM with --shutdown-delay: /readyz 503 at once, /healthz still 200, then exit 0."""
    ca, good = client_ca
    probe_port = free_port()
    with serve(tmp_path, "--client-ca", str(ca), "--probe-port", str(probe_port),
               "--shutdown-delay", "30", client_cert=good) as running, \
            httpx.Client(base_url=f"http://127.0.0.1:{probe_port}", timeout=10) as kubelet:
        assert kubelet.get("/readyz").status_code == 200
        running.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while kubelet.get("/readyz").status_code != 503:
            assert time.monotonic() < deadline, "readiness never turned false"
            time.sleep(0.05)
        assert kubelet.get("/healthz").status_code == 200
        assert samples(kubelet.get("/metrics").text, "flannel_guard_ready") == {"": 0.0}
        # A second SIGTERM stops at once; both listeners close and the process exits 0.
        assert running.stop(signal.SIGTERM) == 0
        with pytest.raises(httpx.ConnectError):
            kubelet.get("/healthz")


def test_readiness_stays_false_through_the_shutdown_delay_while_the_node_watch_syncs(tmp_path: Path) -> None:
    """Found by tests/test_outage.py's rolling restart: each node watch event marked the replica
    ready again, so the Service kept routing to a replica about to close its port. Readiness is
    now false from the signal on, whatever the watch hears; reviews are answered as before."""
    api = ApiThread()
    try:
        cfg = kubeconfig_file(tmp_path / "kubeconfig", api.api.url)
        with serve(tmp_path, "--kubeconfig", str(cfg), "--shutdown-delay", "30") as running:
            client = running.client()
            running.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 60
            while client.get("/readyz").status_code != 503:
                assert time.monotonic() < deadline, "readiness never turned false"
                time.sleep(0.05)
            # Watch events (the node index syncing) while the delay runs: still 503.
            synced = running.metric("flannel_guard_api_last_sync_timestamp_seconds", client)
            for i in range(3):
                api.call(api.api.put_node(api_node(f"n{i}", f"10.244.{i}.0/24")))
            api.call(api.api.bookmark())
            while running.metric("flannel_guard_api_last_sync_timestamp_seconds", client) <= synced:
                assert time.monotonic() < deadline, "the watch never synced after the signal"
                time.sleep(0.05)
            resp = client.post("/mutate", json=review(node("n10"), "CREATE")).json()["response"]
            assert resp["allowed"] and "patch" in resp  # still assigning, not "not ready"
            r = client.get("/readyz")
            assert (r.status_code, r.text) == (503, "not ready: shutting down")
            assert running.stop(signal.SIGTERM) == 0
    finally:
        api.close()


def test_pool_blocks_count_each_block_once_and_add_up_to_the_capacity() -> None:
    cidr_set = CidrSet(ipaddress.ip_network("10.244.0.0/22"), 24)
    nets = [ipaddress.ip_network(n) for n in ("10.244.0.0/24", "10.244.1.0/24")]
    for net in nets:
        cidr_set.occupy(net)
    cidr_set.occupy(ipaddress.ip_network("10.244.2.0/24"))  # a reservation, no node yet
    nodes = [*nets, ipaddress.ip_network("10.244.0.0/25"),  # overlapping, counted once
             ipaddress.ip_network("192.168.0.0/24"), ipaddress.ip_network("fd00::/64")]
    assert pool_blocks(cidr_set, nodes) == (2, 1, 1)
    # A node whose podCIDR is wider than the mask covers several blocks.
    wide = CidrSet(ipaddress.ip_network("10.244.0.0/22"), 24)
    wide.occupy(ipaddress.ip_network("10.244.0.0/23"))
    assert pool_blocks(wide, [ipaddress.ip_network("10.244.0.0/23")]) == (2, 0, 2)
    assert sum(pool_blocks(wide, [])) == wide.capacity


def test_latency_buckets_reach_past_the_webhook_timeout() -> None:
    assert Metrics.LATENCY_BUCKETS[-1] == 10.0
    assert 5.0 in Metrics.LATENCY_BUCKETS

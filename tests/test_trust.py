"""Who gets an answer, and what leaves the process: TLS, client certificates, logs, the reservation pool."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import flannel_configmap, net_conf, node, review
from server_process import ServerProcess, client_pair, serve

from webhook.core.constants import NAMESPACE, SERVICE
from webhook.service import certs

SECRET = "sk-live-7f3a9c2e-DO-NOT-LOG-4b1d"


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A standalone server with the default settings, for the TLS and log tests."""
    with serve(tmp_path_factory.mktemp("plain")) as running:
        yield running


def _handshake(port: int, ctx: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        cipher = tls.cipher()
        assert cipher is not None
        return cipher[0]


class TestTLS:
    def test_tls_1_2_is_served_with_forward_secret_aead_suites_only(self, plain: ServerProcess) -> None:
        """A TLS 1.2 client gets an ECDHE suite with AES-GCM or ChaCha20-Poly1305."""
        ctx = plain.context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        cipher = _handshake(plain.port, ctx)
        assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher

    @pytest.mark.parametrize("suite", [
        "ECDHE-ECDSA-AES128-SHA",     # ECDHE, but CBC with SHA-1
        "ECDHE-ECDSA-AES256-SHA384",  # ECDHE, CBC
        "AES128-SHA",                 # static RSA key exchange, no forward secrecy
        "AES256-GCM-SHA384",          # AEAD, but no forward secrecy
        "DHE-RSA-AES128-GCM-SHA256",  # finite-field DH
    ])
    def test_a_client_offering_only_a_weak_suite_is_refused(self, plain: ServerProcess, suite: str) -> None:
        ctx = plain.context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.set_ciphers(suite)
        except ssl.SSLError:
            pytest.skip(f"this OpenSSL has no {suite}")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _handshake(plain.port, ctx)

    def test_plain_http_to_the_port_gets_no_http_answer(self, plain: ServerProcess) -> None:
        """There is no plain-HTTP listener: an HTTP request to the port is a failed TLS handshake."""
        with socket.create_connection(("127.0.0.1", plain.port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                data = sock.recv(4096)
            except ConnectionError:
                data = b""
        assert not data.startswith(b"HTTP/"), data[:100]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{plain.port}/healthz", timeout=5)
        # ... and the process still serves HTTPS.
        assert plain.client().get("/healthz").status_code == 200


class TestLogs:
    def test_a_mutation_logs_the_podcidr_it_gave(self, plain: ServerProcess) -> None:
        client = plain.client()
        size_before = plain.log.stat().st_size
        resp = client.post("/mutate", json=review(node("logged-node"))).json()["response"]
        given = json.loads(base64.b64decode(resp["patch"]))[0]["value"]
        deadline = time.monotonic() + 10
        while True:  # the line is written before the answer; the file may lag the pipe a moment
            lines = [json.loads(line) for line in plain.log.read_bytes()[size_before:].splitlines()
                     if b'"admission"' in line]
            if lines:
                break
            assert time.monotonic() < deadline, "no admission line"
            time.sleep(0.02)
        assert lines[-1]["name"] == "logged-node" and lines[-1]["pod_cidrs"] == [given]

    def test_logs_never_hold_the_object_or_a_secret_in_it(self, plain: ServerProcess) -> None:
        """A review carrying a large object with a secret-looking value leaves neither in the log."""
        conf = json.loads(net_conf())
        conf["Backend"] = {"Type": "wireguard", "PSK": SECRET}
        cm = flannel_configmap(json.dumps(conf), **{"token": SECRET, "blob": "z" * 500_000})
        cm["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": SECRET * 100}
        bad = node("worker-1", f"10.244.1.0/24{SECRET}")
        bad["metadata"]["annotations"] = {"flannel.alpha.coreos.com/public-ip": SECRET}
        client = plain.client()
        size_before = plain.log.stat().st_size
        for path, obj in [("/validate", cm), ("/mutate", cm), ("/validate", bad), ("/mutate", bad)]:
            r = client.post(path, json=review(obj))
            assert r.status_code == 200
        # Bad requests are logged too (as counts): their bodies must not be.
        client.post("/validate", content=SECRET.encode() + b"{", headers={"Content-Type": "application/json"})
        time.sleep(0.2)
        text = plain.log.read_bytes()[size_before:].decode()
        assert SECRET not in text
        assert "zzzzzzzzzz" not in text
        assert text.count("\n") >= 4
        assert all(len(line) < 2000 for line in text.splitlines())


class TestDenials:
    @pytest.mark.parametrize("path", ["/validate", "/mutate"])
    def test_a_denial_never_echoes_unbounded_input(self, plain: ServerProcess, path: str) -> None:
        flood = "x" * 100_000
        client = plain.client()
        cases = [
            node("w" + flood, "10.244.300.0/24"),
            node("worker-2", "10.244.2.0/24" + flood),
            node("worker-3", "10.244.3.0/24", podcidr=flood),
            flannel_configmap('{"Network": "' + flood + '"}'),
            flannel_configmap('{"' + flood + '": 1, "' + flood + '": 2}'),
            flannel_configmap('{"Network": "10.244.0.0/16", "SubnetLen": ' + "9" * 100_000 + "}"),
            flannel_configmap('{"Network": "10.244.0.0/16", "Backend": {"Type": "' + flood + '"}}'),
        ]
        for obj in cases:
            resp = client.post(path, json=review(obj)).json()["response"]
            shown = [resp.get("status", {}).get("message", ""), *resp.get("warnings", [])]
            assert all(len(t) <= 3000 for t in shown)
            assert all("x" * 300 not in t and "9" * 300 not in t for t in shown)


def _forge(client: httpx.Client, i: int) -> dict:
    """A Node CREATE for a node that will never exist."""
    r = client.post("/mutate", json=review(node(f"forged-{i:03d}")))
    assert r.status_code == 200
    return r.json()["response"]


def _cidr(resp: dict) -> str | None:
    if "patch" not in resp:
        return None
    ops = json.loads(base64.b64decode(resp["patch"]))
    return next(o["value"] for o in ops if o["path"] == "/spec/podCIDR")


class TestReservationPool:
    def test_forged_node_reviews_hold_at_most_the_cap_for_the_grace_period(self, tmp_path: Path) -> None:
        """Forged CREATEs claim at most the pending cap (a quarter of the pool here), only for the
        grace period; beyond the cap a Node is admitted without a podCIDR, saying why."""
        # 10.244.0.0/24 in /28s: 16 node CIDRs, so a cap of 4 (min(64, 16 / 4)).
        with serve(tmp_path, "--cluster-cidr", "10.244.0.0/24", "--node-cidr-mask-size", "28",
                   "--reservation-grace", "1") as running:
            client = running.client()
            first = [_forge(client, i) for i in range(16)]
            given = [_cidr(r) for r in first if _cidr(r) is not None]
            assert len(given) == len(set(given)) == 4
            beyond = [r for r in first if _cidr(r) is None]
            assert all(r["allowed"] is True and "no podCIDR assigned" in r["warnings"][0] for r in beyond)
            assert "wait for Nodes not stored yet, at most 4" in beyond[0]["warnings"][0]
            # Past the grace period the forged claims are gone, and with them the cap's hold.
            deadline = time.monotonic() + 10
            while "patch" not in (again := _forge(client, 17)):
                assert time.monotonic() < deadline, "forged reservations were never reclaimed"
                time.sleep(0.25)
            assert str(_cidr(again)).startswith("10.244.0.") and str(_cidr(again)).endswith("/28")

    def test_with_a_client_ca_only_callers_with_its_certificate_are_answered(self, tmp_path: Path) -> None:
        """No certificate, or one from another CA: refused in the handshake, nothing reserved."""
        api_ca = certs.generate("apiserver-client", NAMESPACE, days=1)
        (tmp_path / "client-ca.crt").write_bytes(api_ca.ca_cert_pem)
        good = client_pair(tmp_path / "good", api_ca.ca_cert_pem, api_ca.ca_key_pem)
        other = certs.generate("intruder", NAMESPACE, days=1)
        stranger = client_pair(tmp_path / "other", other.ca_cert_pem, other.ca_key_pem, "intruder")
        certs.write_bundle(certs.generate(SERVICE, NAMESPACE, days=1, extra_ips=["127.0.0.1"]), tmp_path)
        with serve(tmp_path, "--client-ca", str(tmp_path / "client-ca.crt"), client_cert=good) as running:
            body = review(node("forged-000"))
            for cert in (None, stranger):
                ctx = running.context(with_cert=False)
                if cert is not None:
                    ctx.load_cert_chain(*cert)
                with httpx.Client(base_url=running.url, verify=ctx, timeout=5) as c, \
                        pytest.raises(httpx.HTTPError):
                    # TLS 1.3 reports the refused certificate on the first read: no response either way.
                    c.post("/mutate", json=body)
            for version in (ssl.TLSVersion.TLSv1_2,):
                ctx = running.context(with_cert=False)
                ctx.maximum_version = version
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    _handshake(running.port, ctx)
            client = running.client()
            assert running.metric("flannel_guard_admission_requests_total", client) == 0
            resp = client.post("/mutate", json=body).json()["response"]
            assert resp["uid"] == body["request"]["uid"] and _cidr(resp) == "10.244.0.0/24"
            assert running.metric("flannel_guard_admission_requests_total", client) == 1

"""``flannel-guard serve`` as a separate process on 127.0.0.1, for tests that need a real process.

Signals, resident memory and the log on standard error belong to a process, so
the fuzz, fault and trust tests start one (the in-process server of
``test_https.py`` serves the rest).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kube_emulator import free_port

from webhook.core.constants import NAMESPACE, SERVICE
from webhook.service import certs

__all__ = ["ServerProcess", "client_pair", "serve"]


@dataclass
class ServerProcess:
    """A running server: its process, port, the CA to trust and the client pair to present."""

    proc: subprocess.Popen[bytes]
    port: int
    ca: Path
    log: Path
    client_cert: tuple[Path, Path] | None = None
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def context(self, *, with_cert: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if with_cert and self.client_cert is not None:
            ctx.load_cert_chain(*self.client_cert)
        return ctx

    def client(self, **kwargs: object) -> httpx.Client:
        client = httpx.Client(base_url=self.url, verify=self.context(), timeout=30, **kwargs)  # type: ignore[arg-type]
        self.clients.append(client)
        return client

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def metric(self, name: str, client: httpx.Client | None = None) -> float:
        """The sum of a Prometheus metric's samples, scraped from /metrics."""
        text = (client or self.client()).get("/metrics").text
        return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))

    def stop(self, sig: int = signal.SIGTERM, wait: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@contextlib.contextmanager
def serve(tmp: Path, *args: str, client_cert: tuple[Path, Path] | None = None,
          env: dict[str, str] | None = None,
          cluster_cidr: str | None = "10.244.0.0/16") -> Iterator[ServerProcess]:
    """``python -m webhook serve`` with a fresh CA and pair in ``tmp``; yields once /readyz is 200.

    Standalone with 10.244.0.0/16 unless ``args`` say otherwise (``--kubeconfig`` turns
    standalone off; ``--cluster-cidr`` given twice: argparse keeps the last).
    """
    if not (tmp / "tls.crt").exists():
        certs.write_bundle(certs.generate(SERVICE, NAMESPACE, days=1, extra_ips=["127.0.0.1"]), tmp)
    port = free_port()
    log = tmp / f"server-{port}.log"
    mode = [] if "--kubeconfig" in args else ["--standalone"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "webhook", "serve", *mode,
             *(["--cluster-cidr", cluster_cidr] if cluster_cidr else []),
             "--port", str(port), "--tls-cert", str(tmp / "tls.crt"), "--tls-key", str(tmp / "tls.key"),
             *args],
            env={**os.environ, "POD_NAMESPACE": NAMESPACE, **(env or {})},
            stdout=subprocess.DEVNULL, stderr=out)
    running = ServerProcess(proc, port, tmp / "ca.crt", log, client_cert)
    try:
        ctx = running.context()
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{running.url}/readyz", verify=ctx, timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.05)
        yield running
    finally:
        for client in running.clients:
            client.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def client_pair(out: Path, ca_cert_pem: bytes, ca_key_pem: bytes,
                name: str = "kube-apiserver") -> tuple[Path, Path]:
    """A client certificate (extended key usage clientAuth) signed by the given CA, as files."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{name}.crt", out / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path

"""webhook.service.certs: the generated PKI, the server TLS context and hot reload.

TLS behaviour is checked with real handshakes against a small TLS server on
127.0.0.1 that uses the context under test, as kube-apiserver would see it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webhook.core.constants import NAMESPACE, SERVICE
from webhook.service import certs

SVC_HOST = f"{SERVICE}.{NAMESPACE}.svc"  # the name kube-apiserver dials


# --- helpers ---------------------------------------------------------------


class TLSServer:
    """A TLS echo server on 127.0.0.1 in a thread, serving with a given context."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.handshake_errors: list[Exception] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                while data := tls.recv(1024):
                    tls.sendall(data)
        except (ssl.SSLError, OSError) as e:
            self.handshake_errors.append(e)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=5)


@contextmanager
def tls_server(context: ssl.SSLContext) -> Iterator[TLSServer]:
    server = TLSServer(context)
    try:
        yield server
    finally:
        server.close()


def client_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


@contextmanager
def connect(port: int, context: ssl.SSLContext, server_hostname: str = SVC_HOST) -> Iterator[ssl.SSLSocket]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
        yield tls


def peer_serial(port: int, ca_file: Path) -> int:
    """Handshake verifying against ca_file and SVC_HOST; the served cert's serial."""
    with connect(port, client_context(ca_file)) as tls:
        tls.sendall(b"ping")
        assert tls.recv(4) == b"ping"
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def sans_of(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


@pytest.fixture(scope="module")
def bundle() -> certs.CertBundle:
    return certs.generate(SERVICE, NAMESPACE)


@pytest.fixture
def cert_dir(tmp_path: Path, bundle: certs.CertBundle) -> Path:
    certs.write_bundle(bundle, tmp_path / "tls")
    return tmp_path / "tls"


def serving_context(cert_dir: Path) -> ssl.SSLContext:
    return certs.server_ssl_context(cert_dir / "tls.crt", cert_dir / "tls.key")


# --- generate ---------------------------------------------------------------


def test_dns_names_are_the_service_names_kube_dns_resolves() -> None:
    assert certs.dns_names("svc", "ns") == [
        "svc",
        "svc.ns",
        "svc.ns.svc",
        "svc.ns.svc.cluster.local",
    ]


def test_serving_certificate_sans_are_dns_names_then_extras() -> None:
    bundle = certs.generate("svc", "ns", extra_dns=["localhost"], extra_ips=["127.0.0.1", "::1"])
    sans = sans_of(load_cert(bundle.cert_pem))
    assert sans.get_values_for_type(x509.DNSName) == [*certs.dns_names("svc", "ns"), "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_serving_certificate_is_a_p256_server_leaf_for_svc_ns_svc() -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    bundle = certs.generate("svc", "ns", days=30)
    cert = load_cert(bundle.cert_pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "svc.ns.svc"
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_before_utc <= before - dt.timedelta(minutes=5)
    lifetime = cert.not_valid_after_utc - before
    assert dt.timedelta(days=30) - dt.timedelta(minutes=1) < lifetime <= dt.timedelta(days=30, minutes=1)


def test_ca_is_a_p256_ca_with_pathlen_0_that_only_signs_certificates() -> None:
    bundle = certs.generate("svc", "ns", days=30)
    ca = load_cert(bundle.ca_cert_pem)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert ca.subject == ca.issuer
    assert ca.not_valid_after_utc == load_cert(bundle.cert_pem).not_valid_after_utc
    load_cert(bundle.cert_pem).verify_directly_issued_by(ca)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"days": 0}, "days must be at least 1", id="zero-days"),
        pytest.param({"extra_ips": ["localhost"]}, "does not appear to be an IP", id="bad-ip"),
    ],
)
def test_generate_refuses_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        certs.generate("svc", "ns", **kwargs)


def test_every_bundle_has_a_new_ca_and_new_keys() -> None:
    a, b = certs.generate("svc", "ns"), certs.generate("svc", "ns")
    assert a.ca_key_pem != b.ca_key_pem
    assert a.key_pem != b.key_pem
    assert load_cert(a.cert_pem).serial_number != load_cert(b.cert_pem).serial_number


# --- a real handshake ---------------------------------------------------------


def test_handshake_verifies_against_the_ca_with_the_service_dns_name(cert_dir: Path) -> None:
    with tls_server(serving_context(cert_dir)) as server:
        serial = peer_serial(server.port, cert_dir / "ca.crt")
    assert serial == load_cert((cert_dir / "tls.crt").read_bytes()).serial_number


def test_handshake_fails_for_a_name_not_in_the_sans(cert_dir: Path) -> None:
    with (
        tls_server(serving_context(cert_dir)) as server,
        pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"),
        connect(server.port, client_context(cert_dir / "ca.crt"), server_hostname="evil.svc"),
    ):
        pass


def test_handshake_fails_against_another_ca(cert_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    certs.write_bundle(certs.generate(SERVICE, NAMESPACE), other)
    with (
        tls_server(serving_context(cert_dir)) as server,
        pytest.raises(ssl.SSLCertVerificationError),
        connect(server.port, client_context(other / "ca.crt")),
    ):
        pass


def tls11_client() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    return context


def test_a_tls_1_1_client_is_refused(cert_dir: Path) -> None:
    # First prove that this machine's OpenSSL can speak TLS 1.1 at all, with a
    # permissive server; otherwise the refusal below would prove nothing.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1_1
    permissive.set_ciphers("ALL:@SECLEVEL=0")
    permissive.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    try:
        with tls_server(permissive) as server, connect(server.port, tls11_client()) as tls:
            assert tls.version() == "TLSv1.1"
    except ssl.SSLError as e:
        pytest.skip(f"this OpenSSL cannot negotiate TLS 1.1 even when allowed: {e}")

    with tls_server(serving_context(cert_dir)) as server:
        with pytest.raises(ssl.SSLError), connect(server.port, tls11_client()):
            pass
        # And a TLS 1.2 client of the same server is served.
        client = client_context(cert_dir / "ca.crt")
        client.maximum_version = ssl.TLSVersion.TLSv1_2
        with connect(server.port, client) as tls:
            assert tls.version() == "TLSv1.2"
            assert "ECDHE" in tls.cipher()[0]


def test_client_ca_makes_a_client_certificate_mandatory(cert_dir: Path, tmp_path: Path) -> None:
    client_dir = tmp_path / "client"
    certs.write_bundle(certs.generate("apiserver", "kube-system"), client_dir)
    context = certs.server_ssl_context(
        cert_dir / "tls.crt", cert_dir / "tls.key", client_ca=client_dir / "ca.crt"
    )
    assert context.verify_mode == ssl.CERT_REQUIRED
    with tls_server(context) as server:
        anonymous = client_context(cert_dir / "ca.crt")
        with pytest.raises((ssl.SSLError, ConnectionError)), connect(server.port, anonymous) as tls:
            # TLS 1.3 reports the refusal on the first read, not in the handshake.
            tls.sendall(b"ping")
            tls.recv(4)


# --- write_bundle -----------------------------------------------------------------


def test_write_bundle_creates_the_folder_and_writes_the_four_files(
    tmp_path: Path, bundle: certs.CertBundle
) -> None:
    out = tmp_path / "a" / "b"
    written = certs.write_bundle(bundle, out)
    assert [p.name for p in written] == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert (out / "tls.crt").read_bytes() == bundle.cert_pem
    assert (out / "tls.key").read_bytes() == bundle.key_pem
    assert (out / "ca.crt").read_bytes() == bundle.ca_cert_pem
    assert (out / "ca.key").read_bytes() == bundle.ca_key_pem
    assert sorted(os.listdir(out)) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]  # no temp files


def test_write_bundle_makes_keys_0600_even_over_looser_files(
    tmp_path: Path, bundle: certs.CertBundle
) -> None:
    (tmp_path / "tls.key").write_bytes(b"old")
    (tmp_path / "tls.key").chmod(0o666)
    certs.write_bundle(bundle, tmp_path)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"ca.key": 0o600, "tls.key": 0o600, "ca.crt": 0o644, "tls.crt": 0o644}


# --- ensure_dev_certs ---------------------------------------------------------------


def test_ensure_dev_certs_writes_once_then_keeps_the_files(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert certs.ensure_dev_certs(out) is True
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert certs.ensure_dev_certs(out) is False
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    sans = sans_of(load_cert(first["tls.crt"]))
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert SVC_HOST in sans.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}


def test_ensure_dev_certs_serves_localhost_over_a_real_handshake(tmp_path: Path) -> None:
    certs.ensure_dev_certs(tmp_path)
    with (
        tls_server(serving_context(tmp_path)) as server,
        connect(server.port, client_context(tmp_path / "ca.crt"), "localhost") as tls,
    ):
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}


def dev_bundle(**kwargs: object) -> certs.CertBundle:
    defaults: dict = {"extra_dns": ["localhost"], "extra_ips": ["127.0.0.1", "::1"]}
    return certs.generate(SERVICE, NAMESPACE, **{**defaults, **kwargs})


@pytest.mark.parametrize(
    "make_stale",
    [
        pytest.param(lambda d: certs.write_bundle(dev_bundle(days=1), d), id="expires-within-24h"),
        pytest.param(lambda d: certs.write_bundle(certs.generate(SERVICE, NAMESPACE), d), id="no-localhost"),
        pytest.param(lambda d: certs.write_bundle(dev_bundle(extra_ips=["::1"]), d), id="no-127.0.0.1"),
        pytest.param(
            lambda d: certs.write_bundle(
                certs.generate("other", NAMESPACE, extra_dns=["localhost"], extra_ips=["127.0.0.1"]),
                d,
            ),
            id="other-service",
        ),
        pytest.param(
            lambda d: (
                certs.write_bundle(dev_bundle(), d),
                (d / "tls.key").write_bytes(dev_bundle().key_pem),
            ),
            id="key-of-another-cert",
        ),
        pytest.param(
            lambda d: (
                certs.write_bundle(dev_bundle(), d),
                (d / "ca.crt").write_bytes(dev_bundle().ca_cert_pem),
            ),
            id="signed-by-another-ca",
        ),
        pytest.param(
            lambda d: (certs.write_bundle(dev_bundle(), d), (d / "ca.crt").unlink()),
            id="ca-missing",
        ),
        pytest.param(
            lambda d: (certs.write_bundle(dev_bundle(), d), (d / "tls.crt").write_bytes(b"junk")),
            id="cert-unparsable",
        ),
    ],
)
def test_ensure_dev_certs_regenerates_unusable_files(tmp_path: Path, make_stale) -> None:
    make_stale(tmp_path)
    assert certs.ensure_dev_certs(tmp_path) is True
    cert = load_cert((tmp_path / "tls.crt").read_bytes())
    assert cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)
    cert.verify_directly_issued_by(load_cert((tmp_path / "ca.crt").read_bytes()))
    assert certs.ensure_dev_certs(tmp_path) is False


# --- CertReloader -------------------------------------------------------------------


def test_reloader_picks_up_a_rotation_without_a_restart(cert_dir: Path, tmp_path: Path) -> None:
    context = serving_context(cert_dir)
    reloader = certs.CertReloader(context, cert_dir / "tls.crt", cert_dir / "tls.key")
    old_ca = tmp_path / "old-ca.crt"
    old_ca.write_bytes((cert_dir / "ca.crt").read_bytes())
    old_serial = load_cert((cert_dir / "tls.crt").read_bytes()).serial_number
    new = certs.generate(SERVICE, NAMESPACE)

    with tls_server(context) as server:
        assert peer_serial(server.port, old_ca) == old_serial
        with connect(server.port, client_context(old_ca)) as established:
            established.sendall(b"one")
            assert established.recv(3) == b"one"

            assert reloader.maybe_reload() is False  # nothing changed yet
            certs.write_bundle(new, cert_dir)
            assert reloader.maybe_reload() is True
            assert reloader.maybe_reload() is False  # same bytes: no second load

            # New handshakes get the new pair, verified against the new CA ...
            assert peer_serial(server.port, cert_dir / "ca.crt") == (load_cert(new.cert_pem).serial_number)
            with (
                pytest.raises(ssl.SSLCertVerificationError),
                connect(server.port, client_context(old_ca)),
            ):
                pass
            # ... while the connection made before the rotation goes on.
            established.sendall(b"two")
            assert established.recv(3) == b"two"
    assert reloader.reloads == 1


def test_reloader_ignores_a_touch_that_changes_no_bytes(cert_dir: Path) -> None:
    reloader = certs.CertReloader(serving_context(cert_dir), cert_dir / "tls.crt", cert_dir / "tls.key")
    for name in ("tls.crt", "tls.key"):
        os.utime(cert_dir / name, (0, 2_000_000_000))
    assert reloader.maybe_reload() is False
    assert (reloader.reloads, reloader.failures) == (0, 0)


@pytest.mark.parametrize(
    "break_pair",
    [
        pytest.param(lambda d, new: (d / "tls.crt").write_bytes(new.cert_pem), id="new-cert-old-key"),
        pytest.param(lambda d, new: (d / "tls.crt").write_bytes(new.cert_pem[:200]), id="half-written-cert"),
        pytest.param(lambda d, new: (d / "tls.key").write_bytes(b""), id="empty-key"),
        pytest.param(lambda d, new: (d / "tls.key").unlink(), id="key-missing"),
    ],
)
def test_reloader_keeps_serving_the_old_pair_when_the_new_one_is_bad(
    cert_dir: Path, tmp_path: Path, break_pair, caplog: pytest.LogCaptureFixture
) -> None:
    context = serving_context(cert_dir)
    reloader = certs.CertReloader(context, cert_dir / "tls.crt", cert_dir / "tls.key")
    ca = tmp_path / "ca.crt"
    ca.write_bytes((cert_dir / "ca.crt").read_bytes())
    old_serial = load_cert((cert_dir / "tls.crt").read_bytes()).serial_number
    new = certs.generate(SERVICE, NAMESPACE)

    with tls_server(context) as server:
        break_pair(cert_dir, new)
        assert reloader.maybe_reload() is False
        assert "keeping the current TLS certificate" in caplog.text
        assert peer_serial(server.port, ca) == old_serial
        assert reloader.failures == 1

        # Once a good pair lands, it is picked up.
        certs.write_bundle(new, cert_dir)
        assert reloader.maybe_reload() is True
        assert peer_serial(server.port, cert_dir / "ca.crt") == load_cert(new.cert_pem).serial_number


def test_reloader_logs_a_bad_pair_once_not_on_every_poll(cert_dir: Path) -> None:
    reloader = certs.CertReloader(serving_context(cert_dir), cert_dir / "tls.crt", cert_dir / "tls.key")
    (cert_dir / "tls.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    for _ in range(3):
        assert reloader.maybe_reload() is False
    assert reloader.failures == 1


def test_reloader_follows_a_secret_volume_symlink_swap(tmp_path: Path) -> None:
    """Kubelet updates a Secret volume by re-pointing ..data at a new folder."""
    vol = tmp_path / "vol"
    vol.mkdir()
    first, second = certs.generate(SERVICE, NAMESPACE), certs.generate(SERVICE, NAMESPACE)
    certs.write_bundle(first, vol / "..2025_01_01")
    (vol / "..data").symlink_to("..2025_01_01")
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (vol / name).symlink_to(f"..data/{name}")
    context = serving_context(vol)
    reloader = certs.CertReloader(context, vol / "tls.crt", vol / "tls.key")

    certs.write_bundle(second, vol / "..2025_02_01")
    (vol / "..data_tmp").symlink_to("..2025_02_01")
    os.replace(vol / "..data_tmp", vol / "..data")
    assert reloader.maybe_reload() is True
    with tls_server(context) as server:
        assert peer_serial(server.port, vol / "ca.crt") == load_cert(second.cert_pem).serial_number


def test_reloader_run_polls_until_cancelled(cert_dir: Path) -> None:
    reloader = certs.CertReloader(serving_context(cert_dir), cert_dir / "tls.crt", cert_dir / "tls.key")

    async def scenario() -> None:
        task = asyncio.create_task(reloader.run(interval=0.01))
        await asyncio.sleep(0.05)
        certs.write_bundle(certs.generate(SERVICE, NAMESPACE), cert_dir)
        for _ in range(200):
            if reloader.reloads:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert reloader.reloads == 1


def test_reloader_run_survives_an_unexpected_error(cert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reloader = certs.CertReloader(serving_context(cert_dir), cert_dir / "tls.crt", cert_dir / "tls.key")
    calls = 0

    def boom() -> bool:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    monkeypatch.setattr(reloader, "maybe_reload", boom)

    async def scenario() -> None:
        task = asyncio.create_task(reloader.run(interval=0.001))
        while calls < 3:
            await asyncio.sleep(0.005)
        task.cancel()

    asyncio.run(scenario())
    assert calls >= 3


def test_a_rotated_pair_is_checked_by_openssl_and_each_problem_named(cert_dir: Path, tmp_path: Path) -> None:
    """webhook/service/tls.py pair_problem: a scratch context loads the pair, as the serving one will."""
    from webhook.service.tls import pair_problem

    cert, key = cert_dir / "tls.crt", cert_dir / "tls.key"
    assert pair_problem(cert, key) is None
    other = tmp_path / "other"
    certs.write_bundle(certs.generate(SERVICE, NAMESPACE), other)
    assert pair_problem(cert, other / "tls.key") == "the key does not belong to the certificate"
    half = tmp_path / "half.crt"
    half.write_bytes(cert.read_bytes()[:200])
    assert (pair_problem(half, key) or "").startswith("does not load")
    assert (pair_problem(cert, tmp_path / "absent.key") or "").startswith("cannot read")


def test_the_server_imports_no_cryptography() -> None:
    """Serving and reloading need only the ssl module: cryptography (8.6 MB) stays out of the server."""
    import subprocess
    import sys

    code = ("import sys, webhook.service.server, webhook.service.tls, webhook.cli;"
            " print('cryptography' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120).stdout.strip()
    assert out == "False"


def test_an_encrypted_key_is_refused_in_words_never_prompted_for(cert_dir: Path, tmp_path: Path) -> None:
    """OpenSSL would prompt on the terminal for the password, holding the server: tls.py never lets it."""
    from cryptography.hazmat.primitives import serialization

    from webhook.service.tls import pair_problem

    key = serialization.load_pem_private_key((cert_dir / "tls.key").read_bytes(), password=None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"secret")))
    assert "the private key is encrypted" in (pair_problem(cert_dir / "tls.crt", locked) or "")
    with pytest.raises(ValueError, match="encrypted"):
        certs.server_ssl_context(cert_dir / "tls.crt", locked)


@pytest.mark.parametrize("which", ["mismatched", "missing"])
def test_serve_with_a_pair_it_cannot_serve_says_why_and_exits_2(cert_dir: Path, tmp_path: Path,
                                                                which: str) -> None:
    import subprocess
    import sys

    other = tmp_path / "other"
    certs.write_bundle(certs.generate(SERVICE, NAMESPACE), other)
    key = other / "tls.key" if which == "mismatched" else tmp_path / "absent.key"
    out = subprocess.run([sys.executable, "-m", "webhook", "serve", "--standalone", "--port", "0",
                          "--tls-cert", str(cert_dir / "tls.crt"), "--tls-key", str(key)],
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "cannot serve --tls-cert" in out.stderr and "Traceback" not in out.stderr
    assert ("does not belong" if which == "mismatched" else "cannot read") in out.stderr

"""TLS for the webhook: a CA and serving certificate, the server context, hot reload.

kube-apiserver calls the webhook over HTTPS at ``https://SVC.NS.svc:443`` and
trusts only the ``caBundle`` of the webhook configuration, so the project makes
its own small PKI:

* :func:`generate` -- a fresh self-signed CA and a serving certificate it signs
  (ECDSA P-256, SANs from :func:`dns_names` plus extras);
* :func:`write_bundle` -- ``ca.crt``, ``ca.key``, ``tls.crt``, ``tls.key`` on disk,
  keys with mode 0600 (the names a ``kubernetes.io/tls`` Secret uses);
* :func:`ensure_dev_certs` -- the idempotent set-up that ``make run`` calls;
* :func:`server_ssl_context` and :class:`CertReloader` -- serving them, from
  :mod:`webhook.service.tls` (re-exported here).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The serving half (no cryptography import: the server loads only it), re-exported.
from webhook.service.tls import CertReloader, server_ssl_context

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "CertBundle",
    "CertReloader",
    "dns_names",
    "ensure_dev_certs",
    "generate",
    "server_ssl_context",
    "write_bundle",
]

log = logging.getLogger(__name__)

#: File names written by :func:`write_bundle` (those of a kubernetes.io/tls Secret).
CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"

#: Not-before is set this far in the past, so that a node whose clock lags a
#: little does not reject a certificate made seconds ago.
_CLOCK_SKEW = dt.timedelta(minutes=5)
#: ensure_dev_certs() regenerates certificates that expire sooner than this.
_DEV_MIN_REMAINING = dt.timedelta(hours=24)
_DEV_EXTRA_DNS = ("localhost",)
_DEV_EXTRA_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class CertBundle:
    """A CA and the serving certificate it signed, all PEM-encoded."""

    ca_cert_pem: bytes
    ca_key_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def dns_names(service: str, namespace: str) -> list[str]:
    """The DNS names a Service is reached by, shortest first.

    kube-apiserver connects to ``SVC.NS.svc``; the other names cover clients
    that use a search path or the full cluster domain.
    """
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def generate(
    service: str,
    namespace: str,
    *,
    days: int = 365,
    extra_dns: Sequence[str] = (),
    extra_ips: Sequence[str] = (),
) -> CertBundle:
    """Make a new self-signed CA and a serving certificate for ``SVC.NS.svc``.

    Both keys are ECDSA P-256. The serving certificate has CN ``SVC.NS.svc``,
    SANs :func:`dns_names` + ``extra_dns`` + ``extra_ips`` (as IP addresses),
    extended key usage serverAuth, and is valid for ``days``.

    The CA is valid for the same ``days`` (not ten years): every call makes a
    new CA, and rotating means running this again and replacing the Secret
    *and* the ``caBundle`` together, so a CA that outlived its only leaf would
    serve nothing but to extend the use of a leaked ``ca.key``. Both
    certificates start five minutes in the past for clock skew.

    Raises :class:`ValueError` for ``days < 1`` or a string in ``extra_ips``
    that is not an IP address.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    ips = [ipaddress.ip_address(ip) for ip in extra_ips]
    now = dt.datetime.now(dt.UTC)
    not_before = now - _CLOCK_SKEW
    not_after = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{service}.{namespace} webhook CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.DNSName(name) for name in [*dns_names(service, namespace), *extra_dns]
    ]
    sans += [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{service}.{namespace}.svc")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return CertBundle(
        ca_cert_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        ca_key_pem=_key_pem(ca_key),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=_key_pem(key),
    )


def write_bundle(bundle: CertBundle, out_dir: Path) -> list[Path]:
    """Write ``ca.crt``, ``ca.key``, ``tls.crt``, ``tls.key`` into ``out_dir``.

    Creates ``out_dir`` if needed. Keys get mode 0600, certificates 0644. Each
    file is written to a temporary name and renamed into place, so a reader
    never sees half a file. Returns the paths in the order above.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [
        (CA_CERT_FILE, bundle.ca_cert_pem, 0o644),
        (CA_KEY_FILE, bundle.ca_key_pem, 0o600),
        (TLS_CERT_FILE, bundle.cert_pem, 0o644),
        (TLS_KEY_FILE, bundle.key_pem, 0o600),
    ]
    written = []
    for name, data, mode in files:
        path = out_dir / name
        _write_atomic(path, data, mode)
        written.append(path)
    return written


def ensure_dev_certs(
    out_dir: Path, *, service: str = "flannel-guard", namespace: str = "flannel-guard"
) -> bool:
    """Make sure ``out_dir`` holds a usable development pair; True if it wrote one.

    Existing files are kept when ``tls.crt``, ``tls.key`` and ``ca.crt`` parse,
    the key matches the certificate, the CA signed it, it is valid for at least
    24 more hours, and its SANs include the service names, ``localhost`` and
    ``127.0.0.1``. Otherwise a new bundle is generated (with ``localhost``,
    ``127.0.0.1`` and ``::1`` added) and written.
    """
    if _dev_certs_usable(out_dir, service, namespace):
        return False
    bundle = generate(service, namespace, extra_dns=_DEV_EXTRA_DNS, extra_ips=_DEV_EXTRA_IPS)
    write_bundle(bundle, out_dir)
    log.info("wrote development certificates to %s", out_dir)
    return True


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pem_pair_problem(cert_pem: bytes, key_pem: bytes) -> str | None:
    """Why this PEM pair cannot be served, or None when it can."""
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as e:
        return f"does not parse: {e}"
    if certs[0].public_key() != key.public_key():
        return "the key does not belong to the certificate"
    return None


def _dev_certs_usable(out_dir: Path, service: str, namespace: str) -> bool:
    try:
        cert = x509.load_pem_x509_certificate((out_dir / TLS_CERT_FILE).read_bytes())
        ca = x509.load_pem_x509_certificate((out_dir / CA_CERT_FILE).read_bytes())
        key_pem = (out_dir / TLS_KEY_FILE).read_bytes()
        if _pem_pair_problem((out_dir / TLS_CERT_FILE).read_bytes(), key_pem) is not None:
            return False
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    deadline = dt.datetime.now(dt.UTC) + _DEV_MIN_REMAINING
    if cert.not_valid_after_utc < deadline or ca.not_valid_after_utc < deadline:
        return False
    names = set(sans.get_values_for_type(x509.DNSName))
    ips = set(sans.get_values_for_type(x509.IPAddress))
    wanted_ips = {ipaddress.ip_address("127.0.0.1")}
    return {*dns_names(service, namespace), "localhost"} <= names and wanted_ips <= ips

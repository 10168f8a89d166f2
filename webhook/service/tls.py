"""Serving TLS: the server's context and the hot reload of a rotated pair, with the ``ssl`` module only.

Apart from :mod:`webhook.service.certs` (which makes certificates with ``cryptography``),
so that the server never imports ``cryptography``: 8.6 MB of RSS it had loaded only to
check a rotated pair, which OpenSSL checks itself when a scratch context loads it
(bench/RESULTS.md, issue 16).

* :func:`server_ssl_context` -- the server-side :class:`ssl.SSLContext`
  (TLS 1.2 minimum, forward-secret AEAD ciphers only);
* :class:`CertReloader` -- picks up a rotated pair without a restart, in the
  manner of controller-runtime's certwatcher: poll, compare *bytes* (a Secret
  volume update swaps a symlink, so mtimes are not to be trusted), validate the
  new pair first and keep serving the old one when the new one is bad.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

__all__ = ["CertReloader", "pair_problem", "server_ssl_context"]

log = logging.getLogger("webhook.service.certs")  # the name operators' log filters already use

#: TLS 1.2 cipher suites: ECDHE key exchange (forward secrecy) with AEAD only.
#: TLS 1.3 suites are all AEAD and are left at OpenSSL's defaults.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _no_password() -> bytes:
    """OpenSSL's password callback: never its own prompt on the terminal, which would block the server."""
    raise ValueError("the private key is encrypted; serve an unencrypted key (a kubernetes.io/tls Secret's)")


def pair_problem(cert_file: Path, key_file: Path) -> str | None:
    """Why the pair in these files cannot be served, or None when it can.

    A scratch context loads it, as the serving one would: OpenSSL parses the chain and
    the key and checks that the key is the certificate's (``SSL_CTX_check_private_key``).
    """
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        scratch.load_cert_chain(certfile=cert_file, keyfile=key_file, password=_no_password)
    except ValueError as e:
        return str(e)
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e) or e.reason == "KEY_VALUES_MISMATCH":
            return "the key does not belong to the certificate"
        return f"does not load as a PEM certificate chain and private key (OpenSSL: {e.reason or e})"
    except OSError as e:
        return f"cannot read: {e}"
    return None


def server_ssl_context(cert_file: Path, key_file: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server-side TLS context serving ``cert_file``/``key_file``.

    TLS 1.2 is the minimum; TLS 1.2 suites are limited to ECDHE with AES-GCM or
    ChaCha20-Poly1305. With ``client_ca``, clients must present a certificate
    signed by it (mutual TLS: kube-apiserver presents one when its
    ``--admission-control-config-file`` names a kubeconfig for the webhook).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.load_cert_chain(certfile=cert_file, keyfile=key_file, password=_no_password)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=client_ca)
    return context


class CertReloader:
    """Reloads a rotated certificate/key pair into a live :class:`ssl.SSLContext`.

    The server keeps its context; :meth:`maybe_reload` calls
    ``context.load_cert_chain`` again when the files' bytes changed, so new
    handshakes get the new pair while established connections go on. A new
    pair is checked first (both parse, the key matches the certificate): a
    half-written or mismatched pair is logged and skipped, and the old pair
    keeps being served until a good one appears. The pair in the files at
    construction time is taken to be the one the context already serves.
    """

    def __init__(self, context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
        self.context = context
        self.cert_file = cert_file
        self.key_file = key_file
        #: Number of successful reloads, and of new pairs refused.
        self.reloads = 0
        self.failures = 0
        # The bytes last loaded (or last refused, so a bad pair is logged once).
        self._loaded = self._read()
        self._refused: tuple[bytes, bytes] | None = None

    def maybe_reload(self) -> bool:
        """Reload the pair if the files changed and the new pair is good; True if reloaded."""
        try:
            pair = self._read()
        except OSError as e:
            self._refuse(None, f"cannot read: {e}")
            return False
        if pair == self._loaded or pair == self._refused:
            return False
        problem = pair_problem(self.cert_file, self.key_file)
        if problem is not None:
            self._refuse(pair, problem)
            return False
        try:
            self.context.load_cert_chain(certfile=self.cert_file, keyfile=self.key_file,
                                         password=_no_password)
        except (OSError, ValueError) as e:
            # The files changed again between the check and the load. OpenSSL
            # may have dropped the key it had, so forget what is loaded: the
            # next poll retries as soon as a good pair is on disk.
            self._loaded = (b"", b"")
            self._refuse(None, f"load_cert_chain failed: {e}")
            return False
        self._loaded = pair
        self._refused = None
        self.reloads += 1
        log.info("reloaded TLS certificate from %s", self.cert_file)
        return True

    async def run(self, interval: float = 10.0) -> None:
        """Poll every ``interval`` seconds until cancelled; errors never end the loop."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.maybe_reload()
            except Exception:  # a bug here must not stop the server from serving
                log.exception("certificate reload failed")

    def _read(self) -> tuple[bytes, bytes]:
        return self.cert_file.read_bytes(), self.key_file.read_bytes()

    def _refuse(self, pair: tuple[bytes, bytes] | None, reason: str) -> None:
        self.failures += 1
        if pair is not None:
            self._refused = pair
        log.error(
            "keeping the current TLS certificate: new pair %s / %s refused: %s",
            self.cert_file,
            self.key_file,
            reason,
        )

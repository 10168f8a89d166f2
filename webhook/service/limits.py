"""What one caller may cost the server: connections, time, bodies. The numbers, and why.

flannel-guard listens with ``hostNetwork`` on the node's IP: without ``--client-ca``
anything that can reach the node can connect. The only legitimate caller is
kube-apiserver, and its behaviour sets every number here:

* It calls through a Go ``http.Transport`` (``k8s.io/apimachinery/pkg/util/net/http.go``
  ``SetOldTransportDefaults``: Go's ``TLSHandshakeTimeout`` 10 s, ``IdleConnTimeout``
  90 s), over HTTP/1.1 here (the server offers no h2): one connection per call in
  flight, kept alive between calls. A few API server replicas, each with a few
  connections, and bursts of node registrations: tens of connections, never hundreds.
* It gives up on a call after the webhook's ``timeoutSeconds`` (admissionregistration
  v1: 10 s by default, 30 s at most; flannel-guard's manifests say 5 s). A request
  that has not fully arrived by then has nobody waiting for its answer.
* It sends the whole AdmissionReview at once, with ``Content-Length`` (the body is
  a serialised buffer), right after the headers; it never sends chunked bodies.
* A Node review is a few KiB (object and oldObject); the largest legitimate review
  is a 3 MiB object twice (``settings.MAX_BODY_BYTES``, 7 MiB), and that is rare.

So, per connection (enforced in :mod:`webhook.service.connections`):

``MAX_CONNECTIONS`` 512
    TCP connections open at once, from accept to close, handshakes included. At
    the cap a new connection evicts the oldest one that has not sent a byte (a
    bare connect), else the oldest that has not completed a request (a slow one),
    never one that has (the API server's kept-alive connections); if every open
    one has served a request, the new one is refused.
``HANDSHAKE_SECONDS`` 5
    from accept to a finished TLS handshake (Go itself allows 10 s, but a
    handshake between API server and node takes milliseconds).
``HEADERS_SECONDS`` 5
    from accept, or from the first byte of a later request on a kept-alive
    connection, to its complete headers: a TLS connection that never sends a
    request is closed after this too.
``REQUEST_SECONDS`` 12
    from the same start to the complete body, else the connection is closed: a
    backstop behind the body deadline below (headers 5 s + body 5 s + 2 s), long
    past every webhook's 5 s ``timeoutSeconds``.
``KEEP_ALIVE_SECONDS`` 30
    an idle kept-alive connection is closed (uvicorn's ``timeout_keep_alive``).
``TLS_READ_BUFFER`` 16 KiB
    asyncio allocates 256 KiB per TLS connection before the first byte; a TLS
    record carries at most 16 KiB, so a larger buffer never fills.
``TINY_RECORDS_RATIO`` 4 and ``TINY_RECORDS_AFTER`` 256 KiB
    a connection that has sent more than 256 KiB beyond four times the plaintext
    it carried is closed: asyncio decrypts record by record in Python (about 3 µs
    each), so a body in one-byte TLS records (30 bytes on the wire each) cost 2.8 s
    of CPU per MB. The API server's records are a kilobyte or more (its writes go
    through a buffer), and a handshake is a few KiB.
``MAX_HEADER_BYTES`` 16 KiB
    request line and headers (h11's incomplete-event limit; an API server request
    carries about 300 bytes of headers).

Per body (enforced in :mod:`webhook.service.app`):

``BODY_SECONDS`` 5
    to read a body once its headers are in (the webhooks' ``timeoutSeconds``: the
    API server has given up by then); answered 408.
``SMALL_BODY_BYTES`` 128 KiB and ``LARGE_BODIES_BUDGET`` 16 MiB
    bodies up to 128 KiB (every Node review, every normal ConfigMap review) are
    read at once; larger ones share a budget of 16 MiB (two of the largest reviews
    at once, and change), reserved from their ``Content-Length`` before a byte is
    read. Beyond it: 503 with ``Retry-After: 1`` (for the API server, a webhook
    failure like any other: ``failurePolicy`` decides). The worst a caller can
    hold is then ``MAX_CONNECTIONS`` x 128 KiB + 16 MiB, for at most
    ``BODY_SECONDS``. After an early 413 or 503 the rest of the body is read and
    dropped (not kept), so that a client still sending it sees the answer.
Chunked bodies
    are refused with 411 (the API server never sends one, and a body in one-byte
    chunks cost 6 s of CPU per MB); a request with both ``Content-Length`` and
    ``Transfer-Encoding`` is refused with 400 and the connection closed (RFC 9112
    section 6.3: a possible request smuggling attempt).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BODY_SECONDS",
    "HANDSHAKE_SECONDS",
    "HEADERS_SECONDS",
    "KEEP_ALIVE_SECONDS",
    "LARGE_BODIES_BUDGET",
    "MAX_CONNECTIONS",
    "MAX_HEADER_BYTES",
    "REQUEST_SECONDS",
    "RETRY_AFTER_SECONDS",
    "SMALL_BODY_BYTES",
    "TINY_RECORDS_AFTER",
    "TINY_RECORDS_RATIO",
    "TLS_READ_BUFFER",
]

MAX_CONNECTIONS: Final = 512
HANDSHAKE_SECONDS: Final = 5.0
HEADERS_SECONDS: Final = 5.0
REQUEST_SECONDS: Final = HEADERS_SECONDS + 5.0 + 2.0
KEEP_ALIVE_SECONDS: Final = 30
TLS_READ_BUFFER: Final = 16 * 1024
MAX_HEADER_BYTES: Final = 16 * 1024
TINY_RECORDS_RATIO: Final = 4
TINY_RECORDS_AFTER: Final = 256 * 1024

BODY_SECONDS: Final = 5.0
SMALL_BODY_BYTES: Final = 128 * 1024
LARGE_BODIES_BUDGET: Final = 16 * 1024 * 1024
RETRY_AFTER_SECONDS: Final = 1

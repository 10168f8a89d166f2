"""Every TCP connection, from accept to close: a cap, deadlines, small TLS buffers.

uvicorn hands ``loop.create_server`` its own SSL context, and asyncio then gives
each connection a 256 KiB read buffer before the first byte, a 60 s handshake
timeout, and no deadline at all between the handshake and a complete request
(uvicorn's keep-alive timer only runs after a response). Issue 15 measured
2,000 bare connects at 682 MB and slow requests held open for good. So the
listener is created without TLS, and :class:`ConnectionGuard` makes each
connection's protocol itself: once asyncio starts it, a :class:`_TLSConnection`
(asyncio's own ``SSLProtocol`` with a 16 KiB buffer) around a :class:`_GuardedH11`
(uvicorn's h11 protocol, with request deadlines). The numbers are in :mod:`webhook.service.limits`.

What a connection goes through (one timer per connection, re-armed per phase):

* accepted: counted; at the cap the oldest connection that has not sent a byte
  is aborted to make room, else the oldest that has not completed a request (if
  every one has, the new one is refused);
* TLS handshake within ``HANDSHAKE_SECONDS`` of accept;
* the request's headers within ``HEADERS_SECONDS`` of accept (or of the first
  byte of a later request on a kept-alive connection), its body within
  ``REQUEST_SECONDS`` of the same start;
* between requests, uvicorn's keep-alive timeout;
* a peer whose TLS records carry far fewer bytes than they take on the wire
  (one-byte records) is closed once it has sent ``TINY_RECORDS_AFTER``.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from asyncio import sslproto
from typing import Any

import h11
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from webhook.service import limits
from webhook.service.asgi import BODY_RECEIVED

__all__ = ["ConnectionGuard"]

log = structlog.get_logger("flannel_guard")

# Why a connection was closed by the server before it was done (a metric label: a closed set).
_REASONS = ("evicted", "refused", "handshake_timeout", "headers_timeout", "request_timeout",
            "tiny_records")


class _Conn:
    """One accepted connection, as the guard sees it."""

    __slots__ = ("accepted_at", "dropped", "plain", "proven", "started", "timer", "transport")

    def __init__(self) -> None:
        self.accepted_at = time.monotonic()
        self.transport: asyncio.BaseTransport | None = None
        # The TLS handshake finished (an HTTP protocol is attached).
        self.started = False
        # A request has been read in full on it: the API server's connections are, an
        # attacker's bare connects and slow requests are not.
        self.proven = False
        self.timer: asyncio.TimerHandle | None = None
        # Bytes of plaintext TLS has handed to HTTP.
        self.plain = 0
        # Evicted or dropped at shutdown, maybe before asyncio called connection_made (it
        # accepts a burst of connections first and calls them soon after).
        self.dropped = False

    def arm(self, loop: asyncio.AbstractEventLoop, at: float, expire: Any) -> None:
        self.disarm()
        self.timer = loop.call_at(loop.time() + max(0.0, at - time.monotonic()), expire)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def abort(self) -> None:
        self.dropped = True
        self.disarm()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()  # type: ignore[attr-defined]


class ConnectionGuard:
    """The protocol factory for the listener: counts connections and builds each one's protocols."""

    def __init__(self, context: ssl.SSLContext, registry: CollectorRegistry | None = None,
                 max_connections: int = limits.MAX_CONNECTIONS) -> None:
        self.context = context
        self.max_connections = max_connections
        # Oldest first: the eviction order. Connections that have not sent a byte go first
        # (a flood of bare connects never pushes out a client that is talking), then those
        # that have not completed a request; those that have are never evicted.
        self._silent: collections.OrderedDict[_Conn, None] = collections.OrderedDict()
        self._unproven: collections.OrderedDict[_Conn, None] = collections.OrderedDict()
        self._proven: set[_Conn] = set()
        self.closing = False
        self.closed = Counter(
            "flannel_guard_connections_closed",
            "Connections the server closed before they were done, by reason.",
            ["reason"], registry=registry)
        for reason in _REASONS:
            self.closed.labels(reason)
        self.open = Gauge("flannel_guard_connections_open", "TCP connections open, handshakes included.",
                          registry=registry)
        self.open.set_function(lambda: len(self))

    def __len__(self) -> int:
        return len(self._silent) + len(self._unproven) + len(self._proven)

    def __call__(self, *, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> asyncio.BaseProtocol:
        """A new connection was accepted: its protocols.

        Installed as uvicorn's ``http_protocol_class``, so uvicorn calls it as it would
        the class, once per accepted connection.
        """
        loop = _loop or asyncio.get_running_loop()
        if self.closing:
            return _Refuse()
        if len(self) >= self.max_connections:
            victims = self._silent or self._unproven
            if not victims:
                self.closed.labels("refused").inc()
                return _Refuse()
            oldest, _ = victims.popitem(last=False)
            self.closed.labels("evicted").inc()
            oldest.abort()
        conn = _Conn()
        self._silent[conn] = None
        return _Pending(self, conn, config=config, server_state=server_state, app_state=app_state,
                        loop=loop)

    def talking(self, conn: _Conn) -> None:
        """Its first byte arrived."""
        if conn in self._silent:
            del self._silent[conn]
            self._unproven[conn] = None

    def prove(self, conn: _Conn) -> None:
        if conn in self._unproven:
            del self._unproven[conn]
            conn.proven = True
            self._proven.add(conn)

    def forget(self, conn: _Conn) -> None:
        self._silent.pop(conn, None)
        self._unproven.pop(conn, None)
        self._proven.discard(conn)
        conn.disarm()

    def expired(self, conn: _Conn, reason: str) -> None:
        self.closed.labels(reason).inc()
        log.debug("connection closed", reason=reason,
                  after_s=round(time.monotonic() - conn.accepted_at, 1))
        conn.abort()

    def stop(self) -> None:
        """Shutting down: refuse new connections, drop those still in their handshake."""
        self.closing = True
        for conn in [*self._silent, *(c for c in self._unproven if not c.started)]:
            self.forget(conn)
            conn.abort()


class _Refuse(asyncio.Protocol):
    """Over the cap: closed at once, before a byte is read or a buffer allocated."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


class _Pending(asyncio.Protocol):
    """Accepted, not a byte received yet: the TLS and HTTP protocols are built on the first byte.

    A bare connect then costs the socket and this object (about 2 KiB, against 24 KiB with
    TLS state), and asyncio's habit of accepting a burst of connections (up to the
    backlog) before it calls any of them allocates nothing for those the cap evicts.
    """

    def __init__(self, guard: ConnectionGuard, conn: _Conn, *, loop: asyncio.AbstractEventLoop,
                 **http: Any) -> None:
        self._guard = guard
        self._conn = conn
        self._loop = loop
        self._http = http
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._conn.transport = transport
        if self._conn.dropped:  # evicted between accept and now
            transport.abort()  # type: ignore[attr-defined]
            return
        self._transport = transport  # type: ignore[assignment]
        self._conn.arm(self._loop, self._conn.accepted_at + limits.HANDSHAKE_SECONDS,
                       lambda: self._guard.expired(self._conn, "handshake_timeout"))

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._guard.talking(self._conn)
        http = _GuardedH11(self._guard, self._conn, _loop=self._loop, **self._http)
        tls = _TLSConnection(self._guard, self._conn, self._loop, http, self._guard.context)
        transport.set_protocol(tls)
        tls.connection_made(transport)
        view = memoryview(data)
        while view and tls._transport is not None:  # the bytes already read go to TLS
            buf = tls.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            view = view[n:]
            tls.buffer_updated(n)

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.forget(self._conn)


class _TLSConnection(sslproto.SSLProtocol):
    """asyncio's server-side TLS, with a read buffer of one TLS record, and a handshake deadline."""

    # A TLS record holds at most 16 KiB of plaintext; asyncio's 256 KiB never fills.
    max_size = limits.TLS_READ_BUFFER

    def __init__(self, guard: ConnectionGuard, conn: _Conn, loop: asyncio.AbstractEventLoop,
                 app: asyncio.Protocol, context: ssl.SSLContext) -> None:
        # asyncio's own handshake timeout stays as a backstop behind ours (which is counted).
        super().__init__(loop, app, context, None, server_side=True,
                         ssl_handshake_timeout=limits.HANDSHAKE_SECONDS + 1)
        self._guard = guard
        self._conn = conn
        self._raw = 0

    def buffer_updated(self, nbytes: int) -> None:
        # asyncio decrypts record by record in Python (~3 µs each): a peer sending one-byte
        # records costs a hundred times what the same bytes in full records cost.
        self._raw += nbytes
        if self._raw > limits.TINY_RECORDS_AFTER and \
                self._raw > limits.TINY_RECORDS_RATIO * self._conn.plain + limits.TINY_RECORDS_AFTER:
            self._guard.expired(self._conn, "tiny_records")
            return
        super().buffer_updated(nbytes)

    # connection_made: asyncio's (the handshake deadline was armed at accept by _Pending).

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.forget(self._conn)
        super().connection_lost(exc)


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on every request, from its start to its last byte."""

    def __init__(self, guard: ConnectionGuard, conn: _Conn, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._guard = guard
        self._conn = conn
        # "headers": a request has begun (or the connection is new); "body": its headers are
        # in; "idle": between requests (uvicorn's keep-alive timer runs).
        self._phase = "idle"
        self._started_at = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._conn.started = True
        # The first request's clock started at accept: a TLS connection that never sends a
        # request is closed when its headers are due.
        self._begin(self._conn.accepted_at)

    def data_received(self, data: bytes) -> None:
        self._conn.plain += len(data)
        if self._phase == "idle":
            self._begin(time.monotonic())
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request
        self._track()

    def _begin(self, at: float) -> None:
        self._phase = "headers"
        self._started_at = at
        self._conn.arm(self.loop, at + limits.HEADERS_SECONDS,
                       lambda: self._guard.expired(self._conn, "headers_timeout"))

    def _track(self) -> None:
        """Follow h11's view of the client's side: headers in, body in, next request."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._phase == "headers":
                self._phase = "body"
                self._conn.arm(self.loop, self._started_at + limits.REQUEST_SECONDS,
                               lambda: self._guard.expired(self._conn, "request_timeout"))
            return
        if state is h11.IDLE:
            if self._phase == "body":
                # The body was discarded after an early answer, and the next cycle began.
                self._done()
            if self._phase == "idle" and self.conn.trailing_data[0]:
                self._begin(time.monotonic())
            return
        if self._phase != "idle":  # DONE (answer pending), MUST_CLOSE, CLOSED, ERROR
            if state is h11.DONE:
                # The whole body is in the cycle's buffer: the handler reads it without a deadline.
                self.scope[BODY_RECEIVED] = True
            self._done()

    def _done(self) -> None:
        self._phase = "idle"
        self._conn.disarm()
        if self.conn.their_state is not h11.ERROR:
            self._guard.prove(self._conn)

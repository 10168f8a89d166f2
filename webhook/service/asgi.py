"""An admission request as ASGI frames it: three headers, a bounded body, a JSON answer.

Everything here is settled before a review runs (controller-runtime's
``pkg/webhook/admission/http.go`` does the same): what the body may cost
(:mod:`webhook.service.limits` says why each number), refusals with their status
and headers, and the answer as the two ASGI messages Starlette's ``Response`` would
send. The handlers in :mod:`webhook.service.app` and the benchmark's floor share it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Send

from webhook.service import limits
from webhook.service.admission import BadReview

__all__ = ["BODY_RECEIVED", "BodyBudget", "Head", "Refused", "read_body", "send_json"]

# Set in a request's ASGI scope by the connection guard once the server holds its whole body
# (h11 has read the end of the message): reading it then needs no deadline. A scope key of
# this server's own, as ASGI allows; absent, a body is read under ``BODY_SECONDS``.
BODY_RECEIVED = "flannel_guard.body_received"


class Refused(BadReview):
    """Raised when a request is refused before its body is read in full; ``close`` ends the connection.

    Without ``close``, uvicorn reads the rest of the body and drops it (within the
    connection's request deadline), so that a client still sending it sees the answer.
    """

    def __init__(self, message: str, *, status: int, close: bool = False,
                 retry_after: int | None = None) -> None:
        super().__init__(message, status=status)
        self.headers: dict[str, str] = {}
        if close:  # the rest of the body cannot be framed, or is not coming
            self.headers["Connection"] = "close"
        if retry_after is not None:
            self.headers["Retry-After"] = str(retry_after)


class BodyBudget:
    """Bytes of large bodies being read at once, reserved from their ``Content-Length``.

    Bodies up to ``small`` are read at once and not counted (every Node review; they are
    bounded by the connection cap); larger ones share ``total``, so that bodies held
    open (issue 15: 40 near-complete 7 MiB bodies, 383 MB) cost at most ``total``.
    """

    def __init__(self, total: int = limits.LARGE_BODIES_BUDGET,
                 small: int = limits.SMALL_BODY_BYTES) -> None:
        self.total = total
        self.small = small
        self.in_use = 0

    @contextlib.contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        """Hold ``size`` bytes of the budget while a body is read; 503 when they are not free."""
        if size <= self.small:
            yield
            return
        if self.in_use + size > self.total:
            raise Refused(
                f"too many large request bodies are being read at once ({self.in_use:,} of"
                f" {self.total:,} bytes in use); retry", status=503,
                retry_after=limits.RETRY_AFTER_SECONDS)
        self.in_use += size
        try:
            yield
        finally:
            self.in_use -= size


class Head:
    """The three request headers an admission reads, straight from the ASGI scope (first of each)."""

    __slots__ = ("content_length", "content_type", "transfer_encoding")

    def __init__(self, scope: dict[str, Any]) -> None:
        self.content_type: str | None = None
        self.content_length: str | None = None
        self.transfer_encoding = False
        for name, value in scope["headers"]:  # ASGI: names lower-cased, values latin-1 bytes
            if name == b"content-type":
                if self.content_type is None:
                    self.content_type = value.decode("latin-1")
            elif name == b"content-length":
                if self.content_length is None:
                    self.content_length = value.decode("latin-1")
            elif name == b"transfer-encoding":
                self.transfer_encoding = True


async def read_body(head: Head, receive: Receive, limit: int, budget: BodyBudget | None = None,
                    seconds: float = limits.BODY_SECONDS, *, received: bool = False) -> bytes:
    """Read at most ``limit`` bytes within ``seconds``; refuse before reading a body that says it is bigger.

    kube-apiserver always sends ``Content-Length``: a chunked body is refused (411), and
    one with both headers too (400; RFC 9112 section 6.3 says close the connection).
    The body comes from ASGI ``receive`` itself: a Node review arrives in one message.
    ``received``: the server has the whole body already (:data:`BODY_RECEIVED` in the
    scope), so ``receive`` answers at once and no deadline is armed for it.
    """
    declared = head.content_length
    if head.transfer_encoding:
        if declared is not None:
            raise Refused("a request with both Content-Length and Transfer-Encoding is refused",
                           status=400, close=True)
        raise Refused("a chunked body is not accepted: send the AdmissionReview with"
                       " Content-Length", status=411, close=True)
    size = 0
    if declared is not None:
        if not declared.isdigit() or len(declared) > 19:
            raise BadReview("invalid Content-Length")
        size = int(declared)
        if size > limit:
            raise Refused(f"body of {declared} bytes exceeds the {limit}-byte limit", status=413)
    small = budget is None or size <= budget.small
    # A budgeted body is never whole before the handler reads it (uvicorn stops reading at
    # 64 KiB until then): it is reserved and read under the deadline whatever the flag says.
    if received and small:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise ClientDisconnect()
        body: bytes = message.get("body", b"")
        if len(body) > limit:
            raise Refused(f"body exceeds the {limit}-byte limit", status=413)
        if not message.get("more_body", False):
            return body
        receive = _then(receive, message)  # not the whole body after all: the rest under the deadline
    if small:
        return await _read(receive, limit, seconds)
    assert budget is not None
    with budget.reserve(size):
        return await _read(receive, limit, seconds)


def _then(receive: Receive, first: dict[str, Any]) -> Receive:
    """``receive`` that answers ``first`` before the messages still to come."""
    pending = [first]

    async def again() -> Any:
        return pending.pop() if pending else await receive()
    return again


async def _read(receive: Receive, limit: int, seconds: float) -> bytes:
    chunks: list[bytes] = []
    received = 0
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await receive()
                if message["type"] != "http.request":  # http.disconnect
                    raise ClientDisconnect()
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    raise Refused(f"body exceeds the {limit}-byte limit", status=413)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise Refused(f"body not received within {seconds:g} s", status=408, close=True) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_json(send: Send, status: int, body: bytes,
                    headers: dict[str, str] | None = None) -> None:
    """Answer with a JSON body: two ASGI messages, as Starlette's ``Response`` sends them."""
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if headers:
        raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})

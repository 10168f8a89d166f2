"""Reading an admission's body: at once when the server holds all of it, else under its deadline.

The connection guard marks a request's scope (``BODY_RECEIVED``) once h11 has read the
end of its message; :func:`webhook.service.asgi.read_body` then takes the body without
arming a timer. A body still on its way is read under ``BODY_SECONDS`` and answered 408
when it does not come (the slow path is also shown against the real server in
test_hostile.py).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import served_in_thread
from fastapi import FastAPI
from kube_emulator import free_port
from starlette.requests import ClientDisconnect

import webhook.service.server
from webhook.control.settings import Settings
from webhook.control.state import ClusterState
from webhook.core.constants import NAMESPACE, SERVICE
from webhook.service import certs
from webhook.service.asgi import BODY_RECEIVED, Head, Refused, read_body, send_json
from webhook.service.metrics import Metrics

BODY = b'{"apiVersion": "admission.k8s.io/v1"}'


def _head(length: int | None) -> Head:
    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return Head({"headers": headers})


def _receiver(*messages: dict[str, Any], yields: bool = False) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if yields:
            await asyncio.sleep(0)  # as a body still on the wire: the task waits a turn
        return queue.pop(0)
    return receive


def _read(receive: Any, *, received: bool, limit: int = 1 << 20, seconds: float = 5.0,
          length: int | None = len(BODY)) -> bytes:
    return asyncio.run(read_body(_head(length), receive, limit, seconds=seconds, received=received))


def test_a_received_body_is_taken_without_a_deadline():
    """With the whole body held, even a 0 s deadline is never armed; without, it fires at the first wait."""
    message = {"type": "http.request", "body": BODY, "more_body": False}
    assert _read(_receiver(message, yields=True), received=True, seconds=0) == BODY
    with pytest.raises(Refused) as e:
        _read(_receiver(message, yields=True), received=False, seconds=0)
    assert e.value.status == 408 and e.value.headers == {"Connection": "close"}


def test_a_received_body_that_is_not_whole_is_read_on_under_the_deadline():
    first = {"type": "http.request", "body": BODY[:10], "more_body": True}
    rest = {"type": "http.request", "body": BODY[10:], "more_body": False}
    assert _read(_receiver(first, rest), received=True) == BODY
    with pytest.raises(Refused) as e:
        _read(_receiver(first, rest, yields=True), received=True, seconds=0)
    assert e.value.status == 408


def test_a_received_body_is_still_bounded_and_a_disconnect_is_a_disconnect():
    with pytest.raises(Refused) as e:
        _read(_receiver({"type": "http.request", "body": BODY, "more_body": False}), received=True,
              limit=len(BODY) - 1, length=None)
    assert e.value.status == 413
    with pytest.raises(ClientDisconnect):
        _read(_receiver({"type": "http.disconnect"}), received=True)


# --- over a real TLS connection: what the guard tells the handler ---------------------------------


class _Seen:
    def __init__(self) -> None:
        self.flags: list[bool] = []
        self.entered = threading.Event()


@pytest.fixture
def seen_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, Path, _Seen]]:
    """flannel-guard's server stack (guard, TLS, uvicorn) around a handler that notes BODY_RECEIVED."""
    seen = _Seen()

    async def handler(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.flags.append(BODY_RECEIVED in scope)
        seen.entered.set()
        body = await read_body(Head(scope), receive, 1 << 20, received=BODY_RECEIVED in scope)
        await send_json(send, 200, body)

    def app(*_: Any, **__: Any) -> FastAPI:
        a = FastAPI()
        a.state.metrics = Metrics()
        a.state.admission_routes = {"/validate": handler}
        return a

    monkeypatch.setattr(webhook.service.server, "create_app", app)
    certs.write_bundle(certs.generate(SERVICE, NAMESPACE, days=1, extra_ips=["127.0.0.1"]), tmp_path)
    port = free_port()
    settings = Settings(host="127.0.0.1", port=port, tls_cert=tmp_path / "tls.crt",
                        tls_key=tmp_path / "tls.key")
    server, _ = webhook.service.server.build_server(settings, ClusterState(cluster_cidr=None,
                                                                           cidr_source="none"))
    with served_in_thread(server):
        yield port, tmp_path / "ca.crt", seen


def _connect(port: int, ca: Path) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(ca))
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                           server_hostname="127.0.0.1")
    return sock


def _head_bytes(length: int) -> bytes:
    return (f"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _answer(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while not data.endswith(BODY):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def test_the_guard_marks_a_request_whose_body_it_holds(seen_server):
    port, ca, seen = seen_server
    with _connect(port, ca) as sock:
        sock.sendall(_head_bytes(len(BODY)) + BODY)  # one TLS record: headers and body together
        assert _answer(sock).startswith(b"HTTP/1.1 200")
        # The body sent only once the handler runs: not marked, read under the deadline.
        seen.entered.clear()
        sock.sendall(_head_bytes(len(BODY)))
        assert seen.entered.wait(10)
        sock.sendall(BODY)
        assert _answer(sock).startswith(b"HTTP/1.1 200")
    assert seen.flags == [True, False]

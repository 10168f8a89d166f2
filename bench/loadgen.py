"""The load generator: a separate process that drives one HTTPS server over keep-alive connections.

``python bench/loadgen.py SPEC.json`` reads what to send and prints one JSON
object: per-request latencies (µs), wall time, and the client's own CPU time,
so that the client's overhead is measured rather than assumed.

Requests are pre-built byte strings (HTTP/1.1, ``Content-Length``, keep-alive,
the headers kube-apiserver's webhook client sends), written to raw TLS
sockets: concurrency 1 uses one blocking ``ssl`` socket (the cheapest client
there is), higher concurrency one asyncio stream per connection. A response
is read by its ``Content-Length``; every status must be 200 and the first
response of each run is returned for the caller to check.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import sys
import time
from typing import Any


def _request(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nAccept: application/json, */*\r\n"
        "User-Agent: kube-apiserver-admission\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _parse_head(head: bytes) -> tuple[int, int]:
    """(status, content-length) of a response head."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, length


def run_blocking(ctx: ssl.SSLContext, host: str, port: int, requests: list[bytes], count: int,
                 warmup: int) -> tuple[list[float], bytes]:
    """Concurrency 1: one blocking TLS socket, one request at a time."""
    raw = socket.create_connection((host, port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = ctx.wrap_socket(raw, server_hostname=host)
    latencies: list[float] = []
    first = b""
    buf = b""
    clock = time.perf_counter_ns
    try:
        for i in range(warmup + count):
            req = requests[i % len(requests)]
            t0 = clock()
            sock.sendall(req)
            while (end := buf.find(b"\r\n\r\n")) < 0:
                buf += sock.recv(65536)
            status, length = _parse_head(buf[:end])
            need = end + 4 + length
            while len(buf) < need:
                buf += sock.recv(65536)
            body, buf = buf[end + 4:need], buf[need:]
            elapsed = clock() - t0
            if status != 200:
                raise SystemExit(f"HTTP {status}: {body[:300]!r}")
            if i == warmup:
                first = body
            if i >= warmup:
                latencies.append(elapsed / 1000)
    finally:
        sock.close()
    return latencies, first


async def run_async(ctx: ssl.SSLContext, host: str, port: int, requests: list[bytes], count: int,
                    warmup: int, concurrency: int) -> tuple[list[float], bytes]:
    """Concurrency > 1: ``concurrency`` keep-alive connections, each with one request in flight."""
    latencies: list[float] = []
    first: list[bytes] = []
    issued = 0
    clock = time.perf_counter_ns

    async def worker() -> None:
        nonlocal issued
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while issued < warmup + count:
                i = issued
                issued += 1
                t0 = clock()
                writer.write(requests[i % len(requests)])
                head = await reader.readuntil(b"\r\n\r\n")
                status, length = _parse_head(head)
                body = await reader.readexactly(length)
                elapsed = clock() - t0
                if status != 200:
                    raise SystemExit(f"HTTP {status}: {body[:300]!r}")
                if i >= warmup:
                    latencies.append(elapsed / 1000)
                    if not first:
                        first.append(body)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, first[0] if first else b""


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec: dict[str, Any] = json.load(f)
    ctx = ssl.create_default_context(cafile=spec["cafile"])
    host, port = spec["host"], spec["port"]
    requests = [_request(host, port, spec["path"], b.encode()) for b in spec["bodies"]]
    count, warmup, concurrency = spec["count"], spec["warmup"], spec["concurrency"]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if concurrency == 1:
        latencies, first = run_blocking(ctx, host, port, requests, count, warmup)
    else:
        latencies, first = asyncio.run(
            run_async(ctx, host, port, requests, count, warmup, concurrency))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    json.dump({"latencies_us": latencies, "wall_s": wall, "client_cpu_s": cpu,
               "requests": count + warmup, "first_response": first.decode()}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])

"""The soak's hostile phase: issue 15's attacks, on a loop, against one server, until SIGTERM.

``python bench/attacker.py PORT CA_FILE OUT_JSON``, started by ``bench/soak.py`` in its
own process (so that its sockets and CPU do not slow the soak's load generator).
Each attack is a thread:

* ``bare``: 200 bare TCP connects a second, each held until the server closes it
  (the handshake deadline), so that more than the connection cap are open at once;
* ``slow``: 60 TLS connections at a time sending a request line and then a header
  byte every half second (slowloris), replaced as the server closes them;
* ``held``: 3 connections at a time declaring a 7 MiB body and sending all of it but
  the last byte (one more than the large-body budget holds: that one gets 503);
* ``forged``: about 5 hostile reviews a second (1.3 MB on average): megabyte kinds, the issue's
  net-conf.json inputs, a list as ``metadata.name``, chunked bodies, Content-Length
  with Transfer-Encoding, bodies cut off by a disconnect;
* ``drain``: the issue's pool drain, every ``SOAK_FORGED_PERIOD`` (60) seconds a burst of
  ``SOAK_FORGED_BURST`` (300) forged Node CREATEs to ``/mutate`` (not dry-run, names that
  never become Nodes) over 4 keep-alive connections, as fast as they are answered. Each
  answer that is a patch holds a podCIDR in a reservation Lease until the server frees it
  (its Node never appeared);
* ``renew``: issue 28's sustained renewing drain: the same ``SOAK_RENEW_NAMES`` (96, more
  than the cap on pending claims) forged names sent to ``/mutate`` round and round at
  ``SOAK_RENEW_RPS`` (3 a second, above the 2.6 that kept a /16 drained before the fix), each
  re-send renewing its name's claim. The server holds at most the cap, releases each claim
  by its age of acquisition however often renewed, and refuses a renewal past that age.

On SIGTERM it writes what it did and what it got back to OUT_JSON.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import selectors
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

BIG = 7 * 1024 * 1024
BURST = int(os.environ.get("SOAK_FORGED_BURST", "300"))
PERIOD = float(os.environ.get("SOAK_FORGED_PERIOD", "60"))
DRAIN_CONNECTIONS = 4
RENEW_NAMES = int(os.environ.get("SOAK_RENEW_NAMES", "96"))
RENEW_RPS = float(os.environ.get("SOAK_RENEW_RPS", "3"))


class Attacker:
    def __init__(self, port: int, ca: str) -> None:
        self.port = port
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        self.stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.bursts: list[dict[str, float]] = []
        self.t0 = time.monotonic()

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def raw(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def tls(self) -> ssl.SSLSocket:
        return self.ctx.wrap_socket(self.raw(), server_hostname="127.0.0.1")

    # -- attacks ------------------------------------------------------------------------------

    def bare(self) -> None:
        sel = selectors.DefaultSelector()
        opened: dict[socket.socket, float] = {}
        while not self.stop.is_set():
            started = time.monotonic()
            for _ in range(200):
                with contextlib.suppress(OSError):
                    s = self.raw()
                    s.setblocking(False)
                    sel.register(s, selectors.EVENT_READ)
                    opened[s] = time.monotonic()
                    self.count("bare connects")
            while time.monotonic() - started < 1.0 and not self.stop.is_set():
                for key, _ in sel.select(timeout=0.1):
                    s = key.fileobj
                    sel.unregister(s)
                    self.count("bare closed by server")
                    self.count("bare lifetime ms", int((time.monotonic() - opened.pop(s)) * 1000))  # type: ignore[call-overload]
                    s.close()  # type: ignore[union-attr]
        for s in opened:
            s.close()

    def slow(self) -> None:
        conns: list[ssl.SSLSocket] = []
        while not self.stop.is_set():
            while len(conns) < 60 and not self.stop.is_set():
                try:
                    s = self.tls()
                    s.sendall(b"POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                    conns.append(s)
                    self.count("slow opened")
                except OSError:
                    self.count("slow refused")
            time.sleep(0.5)
            for s in list(conns):
                try:
                    s.send(b"X")
                except OSError:
                    conns.remove(s)
                    s.close()
                    self.count("slow closed by server")
        for s in conns:
            s.close()

    def held(self) -> None:
        while not self.stop.is_set():
            socks = []
            for _ in range(3):
                with contextlib.suppress(OSError):
                    s = self.tls()
                    s.sendall(_head("/validate", BIG))
                    socks.append(s)
            holding = []
            for s in socks:
                try:
                    s.settimeout(0.5)
                    self.count(f"held answered {_status(s)} at once")
                    s.close()
                except TimeoutError:
                    holding.append(s)  # being read: it holds part of the budget
                except OSError:
                    s.close()
            for s in holding:
                try:
                    s.settimeout(60)
                    s.sendall(b" " * (BIG - 1))
                    self.count(f"held answered {_status(s)} after holding")
                except OSError:
                    self.count("held closed by server")
                s.close()

    def forged(self) -> None:
        bodies = _forged_bodies()
        i = 0
        while not self.stop.is_set():
            label, send = bodies[i % len(bodies)]
            i += 1
            try:
                s = self.tls()
                s.settimeout(30)
                status = send(s)
                self.count(f"forged {label} -> {status}")
                s.close()
            except OSError as e:
                self.count(f"forged {label} -> {type(e).__name__}")
            time.sleep(0.2)

    def drain(self) -> None:
        burst = 0
        while not self.stop.is_set():
            started = time.monotonic()
            before = self.counts.copy()
            workers = [threading.Thread(target=self._drain_some, args=(f"forged-{burst}-{k}", k), daemon=True)
                       for k in range(DRAIN_CONNECTIONS)]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
            took = time.monotonic() - started
            with self.lock:
                got = {k.removeprefix("drain "): v - before.get(k, 0) for k, v in self.counts.items()
                       if k.startswith("drain ") and v != before.get(k, 0)}
                self.bursts.append({"at_s": round(started - self.t0, 1), "took_s": round(took, 2), **got})
            burst += 1
            self.stop.wait(max(0.0, PERIOD - took))

    def _drain_some(self, prefix: str, k: int) -> None:
        """This connection's share of a burst: forged Node CREATEs, one after another, kept alive."""
        share = BURST // DRAIN_CONNECTIONS + (k < BURST % DRAIN_CONNECTIONS)
        s: ssl.SSLSocket | None = None
        for i in range(share):
            if self.stop.is_set():
                break
            name = f"{prefix}-{i}-{uuid.uuid4().hex[:8]}"
            node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}}
            body = _review(node, dry_run=False)
            try:
                if s is None:
                    s = self.tls()
                    s.settimeout(30)
                s.sendall(_head("/mutate", len(body)) + body)
                status, answer = _response(s)
                self.count(f"drain {_drain_outcome(status, answer)}")
            except OSError as e:
                self.count(f"drain {type(e).__name__}")
                if s is not None:
                    s.close()
                s = None
        if s is not None:
            s.close()

    def renew(self) -> None:
        """The same forged names over and over on one kept-alive connection, ``RENEW_RPS`` a second."""
        s: ssl.SSLSocket | None = None
        period = 1.0 / RENEW_RPS if RENEW_RPS > 0 else 1.0
        i = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            name = f"renewing-{i % RENEW_NAMES:03d}"
            node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}}
            body = _review(node, dry_run=False)
            try:
                if s is None:
                    s = self.tls()
                    s.settimeout(30)
                s.sendall(_head("/mutate", len(body)) + body)
                status, answer = _response(s)
                self.count(f"renew {_drain_outcome(status, answer)}")
            except OSError as e:
                self.count(f"renew {type(e).__name__}")
                if s is not None:
                    s.close()
                s = None
            i += 1
            next_at += period
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        if s is not None:
            s.close()

    def run(self, out: Path) -> None:
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=f, daemon=True) for f in
                   (self.bare, self.slow, self.held, self.forged, self.drain, self.renew)]
        for t in threads:
            t.start()
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        self.stop.set()
        for t in threads:
            t.join(timeout=70)
        counts = dict(sorted(self.counts.items()))
        lifetime = counts.pop("bare lifetime ms", 0)
        closed = counts.get("bare closed by server", 0)
        counts["bare mean lifetime s"] = round(lifetime / closed / 1000, 2) if closed else None
        out.write_text(json.dumps({**counts, "drain bursts": self.bursts}, indent=2) + "\n")


def _head(path: str, length: int | None, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", *extra]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(s: ssl.SSLSocket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionResetError("closed without an answer")
        data += chunk
    return int(data.split(b" ", 2)[1])


def _response(s: ssl.SSLSocket) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of one keep-alive answer (the server sends Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionResetError("closed without an answer")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionResetError("closed mid-answer")
        rest += chunk
    try:
        answer = json.loads(rest[:length])
    except ValueError:
        answer = {}
    return int(head.split(b" ", 2)[1]), answer if isinstance(answer, dict) else {}


def _drain_outcome(status: int, answer: dict[str, Any]) -> str:
    """What a forged Node CREATE got: a podCIDR (a reservation held), none, or something else."""
    resp = answer.get("response") or {}
    if status != 200:
        return f"HTTP {status}"
    if resp.get("allowed") is not True:
        return "denied"
    if "patch" in resp:
        ops = json.loads(base64.b64decode(resp["patch"]))
        return "patched" if any(o.get("path") == "/spec/podCIDRs" for o in ops) else "patched, no podCIDR"
    if any("no free podCIDR" in w for w in resp.get("warnings") or ()):
        return "admitted without podCIDR (exhausted)"
    if any("no podCIDR assigned" in w for w in resp.get("warnings") or ()):
        return "admitted without podCIDR (withheld: the pending cap, or a renewal past the orphan age)"
    return "admitted, no patch"


def _review(obj: dict[str, Any], kind: str | None = None, *, dry_run: bool = True) -> bytes:
    name = (obj.get("metadata") or {}).get("name")
    request = {"uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": kind or obj["kind"]},
               "operation": "CREATE", "name": name if isinstance(name, str) else None,
               "namespace": (obj.get("metadata") or {}).get("namespace"), "object": obj, "dryRun": dry_run}
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": request}).encode()


def _configmap(net_conf: str, name: object = "kube-flannel-cfg") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "kube-flannel"}, "data": {"net-conf.json": net_conf}}


def _forged_bodies() -> list[tuple[str, Any]]:
    keys = ",".join(f'"k{i:05d}": 1' for i in range(40_000))
    near = ",".join(f'"Netwrok{i:05d}": 1' for i in range(60_000))
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "forged"}, "spec": {}}
    reviews = {
        "huge-kind": _review(node, kind="K" + "k" * (1024 * 1024)),
        "duplicate-keys": _review(_configmap("{" + keys + "," + keys + "}")),
        "near-miss-keys": _review(_configmap("{" + near + "}")),
        "huge-key": _review(_configmap('{"' + "Networ" * 1_000_000 + '": 1}')),
        "name-is-a-list": _review(_configmap('{"Network": "10.1.0.0/16"}', name=[])),
    }

    def post(body: bytes) -> Any:
        def send(s: ssl.SSLSocket) -> int:
            s.sendall(_head("/validate", len(body)) + body)
            return _status(s)
        return send

    def chunked(s: ssl.SSLSocket) -> int:
        s.sendall(_head("/validate", None, "Transfer-Encoding: chunked") + b"1\r\n{\r\n" * 100)
        return _status(s)

    def both(s: ssl.SSLSocket) -> int:
        s.sendall(_head("/validate", 2, "Transfer-Encoding: chunked") + b"0\r\n\r\n")
        return _status(s)

    def cut(s: ssl.SSLSocket) -> str:
        s.sendall(_head("/validate", 50_000) + b'{"apiVersion": ')
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        return "cut"

    return [*((label, post(body)) for label, body in reviews.items()),
            ("chunked", chunked), ("content-length-and-transfer-encoding", both), ("disconnect", cut)]


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    Attacker(int(sys.argv[1]), sys.argv[2]).run(Path(sys.argv[3]))

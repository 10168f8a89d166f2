"""The emulated API of ``make bench-storm`` (bench/storm.py): counts, an etcd-like delay, and two fixes.

:class:`StormApi` is :class:`run.BenchApi` (tests/kube_emulator.py's ``FakeKubeApi``) that
counts the podCIDR Lease writes and the creates that lost a race, can delay each Lease write
and read (``--api-ms``), accepts a Node POST (a kubelet registering), and fixes a cost of the
emulator that is not the API server's: each watch stream sends each event once from where it is.
(Label selectors on Node lists and watches are the emulator's own now.)
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH.parent / "tests"), str(BENCH)]

import aiohttp.web  # noqa: E402
from kube_emulator import ApiThread, label_selector_matcher  # noqa: E402
from run import BenchApi  # noqa: E402

__all__ = ["StormApi", "StormApiThread"]


class StormApi(BenchApi):
    """The emulated API, counting the writes of podCIDR Leases and the creates that lost."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.writes: Counter[str] = Counter()
        # Seconds each Lease write and read takes before it is served (``--api-ms``): an etcd
        # write's latency, which the in-memory emulator does not have (0 by default).
        self.delay = 0.0

    async def _slow(self) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)

    def _add_routes(self, app: aiohttp.web.Application) -> None:
        super()._add_routes(app)
        app.router.add_post("/api/v1/nodes", self._node_create)

    async def _node_create(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        """POST a Node (a kubelet registering): stored as sent, watches hear it."""
        body = await request.json()
        await self.put_node(body)
        return aiohttp.web.json_response(self.nodes[body["metadata"]["name"]], status=201)

    async def _lease_get(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        await self._slow()
        return await super()._lease_get(request)

    async def _watch(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        wanted = label_selector_matcher(request.query.get("labelSelector", ""))
        return await self._stream(request, self._history, wanted, lambda: list(self.nodes.values()))

    async def _watch_objects(self, request: aiohttp.web.Request, matches: Any, history: list[Any],
                             current: Any) -> aiohttp.web.StreamResponse:
        return await self._stream(request, history, matches, current)

    async def _stream(self, request: aiohttp.web.Request, history: list[Any], matches: Any,
                      current: Any) -> aiohttp.web.StreamResponse:
        """The emulator's watch, each event sent once from where the stream is (its own rescans
        the whole history at every wake-up: O(events) per event and watcher, which made the
        emulated API, not the replicas, the storm's bottleneck). Nothing here expires."""
        start = int(request.query.get("resourceVersion") or 0)
        resp = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        self._streams[id(request)] = request
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(request.query.get("timeoutSeconds") or 1800)
        try:
            async with self._cond:
                initial = [copy.deepcopy(o) for o in current() if matches(o)] if not start else []
                start = start or self._rv
                pos = bisect.bisect_right([e.rv for e in history], start)
            for obj in initial:
                obj.pop("_plural", None)
                await resp.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
            while True:
                async with self._cond:
                    if pos >= len(history):
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._cond.wait(), remaining)
                        continue
                    pending, pos = history[pos:], len(history)
                lines = [json.dumps({"type": e.body["type"], "object": {
                    k: v for k, v in e.body["object"].items() if k != "_plural"}}).encode() + b"\n"
                    for e in pending if e.body["type"] == "BOOKMARK" or matches(e.body["object"])]
                if lines:
                    await resp.write(b"".join(lines))
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._streams.pop(id(request), None)
        return resp

    async def _lease_create(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        await self._slow()
        body = await request.json()
        name = (body.get("metadata") or {}).get("name") or ""
        mine = (body.get("spec") or {}).get("holderIdentity")
        resp = await super()._lease_create(_Replay(request, body))
        if name.startswith("podcidr-"):
            self.writes["create"] += 1
            if resp.status == 409:
                held = self.leases.get((request.match_info["ns"], name)) or {}
                self.writes["lost" if (held.get("spec") or {}).get("holderIdentity") != mine else "own"] += 1
        return resp

    async def _lease_replace(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        await self._slow()
        if request.match_info["name"].startswith("podcidr-"):
            self.writes["renew"] += 1
        return await super()._lease_replace(request)

    async def _lease_delete(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        await self._slow()
        if request.match_info["name"].startswith("podcidr-"):
            self.writes["delete"] += 1
        return await super()._lease_delete(request)


class _Replay:
    """A request whose JSON body was read already (aiohttp reads a body once)."""

    def __init__(self, request: aiohttp.web.Request, body: dict[str, Any]) -> None:
        self._request, self._body = request, body

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    async def json(self) -> dict[str, Any]:
        return self._body


class StormApiThread(ApiThread):
    def __init__(self) -> None:
        super().__init__(StormApi(keep_requests=False))

    def reset(self, nodes: dict[str, dict[str, Any]] | None = None) -> None:
        async def clear() -> None:
            self.api.leases.clear()
            self.api.nodes = dict(nodes or {})
            self.api.encoded = []  # type: ignore[attr-defined]
            self.api.writes.clear()  # type: ignore[attr-defined]
        self.call(clear())

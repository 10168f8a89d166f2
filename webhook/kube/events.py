"""Kubernetes Events on Nodes, as kube-controller-manager records its own, aggregated.

``kubectl describe node`` then tells the story: a Normal ``PodCIDRAssigned`` when
flannel-guard gives a node its podCIDR (by admission or by the assigning loop),
a Warning ``CIDRNotAvailable`` when the range is exhausted (kube-controller-
manager's own reason for it), a Warning ``PodCIDRClaimRefused`` when a write of a
podCIDR held by another node is refused.

Repeats never flood: as client-go's ``EventCorrelator`` does
(``tools/record/events_cache.go``), an event with the same object, type, reason
and message as one written in the last ten minutes becomes a PATCH of that
event's ``count`` and ``lastTimestamp``, and one object gets at most
:data:`BURST` new writes, then one per :data:`REFILL_SECONDS` (the spam filter).
Writing is asynchronous and best effort: an admission never waits for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import kubernetes.client
import structlog
from kubernetes.client.exceptions import ApiException

from webhook.kube.raw import raw_request

__all__ = ["AGGREGATE_SECONDS", "BURST", "GLOBAL_BURST", "GLOBAL_PER_SECOND", "MAX_IN_FLIGHT",
           "REFILL_SECONDS", "EventRecorder", "event_body"]

log = structlog.get_logger("flannel_guard.events")

#: Same event again within this long: counted on the existing Event (client-go: 10 minutes).
AGGREGATE_SECONDS = 600.0
#: New writes per object before the spam filter holds them back (client-go: 25).
BURST = 10
#: One more write per object each this many seconds (client-go: one per 5 minutes).
REFILL_SECONDS = 60.0
#: Across all objects, the writes of one replica: a burst, then so many a second. Node names
#: come from reviews, and a caller that reaches the port without --client-ca can forge any
#: number of them (issue 15): without this each forged name cost one Event write to the API.
GLOBAL_BURST = 50
GLOBAL_PER_SECOND = 5.0
#: Writes in flight at once; past it an Event is dropped rather than queued behind a slow API.
MAX_IN_FLIGHT = 16
_CACHE = 4096
#: Where events about cluster-scoped objects (Nodes) live, as kube-controller-manager's.
NAMESPACE = "default"
_EVENTS = f"/api/v1/namespaces/{NAMESPACE}/events"


def _stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_body(node: str, kind: str, reason: str, message: str, at: float, instance: str) -> dict[str, Any]:
    """A core/v1 Event about Node ``node`` (its name as the UID, as kube-controller-manager does)."""
    digest = hashlib.sha256(f"{node}\0{kind}\0{reason}\0{message}\0{at}".encode()).hexdigest()[:16]
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{node[:200]}.{digest}", "namespace": NAMESPACE},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node},
        "type": kind, "reason": reason, "message": message[:1024],
        "source": {"component": "flannel-guard"},
        "reportingComponent": "flannel-guard", "reportingInstance": instance[:128],
        "firstTimestamp": _stamp(at), "lastTimestamp": _stamp(at), "count": 1,
    }


@dataclass
class _Seen:
    name: str
    count: int
    last: float


class EventRecorder:
    """Writes aggregated Events through ``api``; :meth:`record` never blocks and never raises."""

    def __init__(self, api: kubernetes.client.ApiClient, instance: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._api = api
        self._instance = instance
        self._clock = clock
        self._seen: OrderedDict[tuple[str, str, str, str], _Seen] = OrderedDict()
        self._tokens: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._global = (float(GLOBAL_BURST), clock())
        self.written = 0
        self.aggregated = 0
        self.dropped = 0

    def normal(self, node: str, reason: str, message: str) -> None:
        self.record(node, "Normal", reason, message)

    def warning(self, node: str, reason: str, message: str) -> None:
        self.record(node, "Warning", reason, message)

    def record(self, node: str, kind: str, reason: str, message: str) -> None:
        if not node or len(node) > 253:
            return
        if len(self._tasks) >= MAX_IN_FLIGHT:
            self.dropped += 1
            return
        try:
            task = asyncio.get_running_loop().create_task(self._write(node, kind, reason, message))
        except RuntimeError:
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Wait for the writes in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _allow(self, node: str, now: float) -> bool:
        """The node's own bucket (client-go's spam filter), then the replica's across all nodes."""
        if not self._allow_node(node, now):
            return False
        tokens, at = self._global
        tokens = min(float(GLOBAL_BURST), tokens + (now - at) * GLOBAL_PER_SECOND)
        if tokens < 1:
            self._global = (tokens, now)
            return False
        self._global = (tokens - 1, now)
        return True

    def _allow_node(self, node: str, now: float) -> bool:
        tokens, at = self._tokens.get(node, (float(BURST), now))
        tokens = min(float(BURST), tokens + (now - at) / REFILL_SECONDS)
        if tokens < 1:
            self._tokens[node] = (tokens, now)
            return False
        self._tokens[node] = (tokens - 1, now)
        self._tokens.move_to_end(node)
        while len(self._tokens) > _CACHE:
            self._tokens.popitem(last=False)
        return True

    async def _write(self, node: str, kind: str, reason: str, message: str) -> None:
        now = self._clock()
        key = (node, kind, reason, message)
        seen = self._seen.get(key)
        if not self._allow(node, now):
            self.dropped += 1
            return
        try:
            if seen is not None and now - seen.last < AGGREGATE_SECONDS:
                seen.count += 1
                seen.last = now
                patch = {"count": seen.count, "lastTimestamp": _stamp(now)}
                await asyncio.to_thread(raw_request, self._api, "patch_namespaced_event",
                                        f"{_EVENTS}/{quote(seen.name)}", body=patch,
                                        content_type="application/merge-patch+json", timeout=(3.0, 5.0))
                self.aggregated += 1
                return
            body = event_body(node, kind, reason, message, now, self._instance)
            await asyncio.to_thread(raw_request, self._api, "create_namespaced_event", _EVENTS, body=body,
                                    timeout=(3.0, 5.0))
            self._seen[key] = _Seen(body["metadata"]["name"], 1, now)
            self._seen.move_to_end(key)
            while len(self._seen) > _CACHE:
                self._seen.popitem(last=False)
            self.written += 1
        except (ApiException, OSError, ValueError) as e:
            # An event is worth less than the work it reports: log, never retry in a loop.
            if isinstance(e, ApiException) and e.status == 404 and seen is not None:
                self._seen.pop(key, None)  # the Event expired (its TTL): the next one is new
            log.info("event not written", node=node[:253], reason=reason, error=str(e)[:160])
        except Exception as e:
            log.info("event not written", node=node[:253], reason=reason, error=f"{type(e).__name__}"[:80])

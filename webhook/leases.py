"""Reservations as ``coordination.k8s.io/v1`` Leases: the ReservationStore of a real cluster.

One Lease per reserved CIDR, named by :func:`~webhook.allocator.lease_name`, in
the webhook's own namespace. The API server's create is exclusive: a second
create of the same name answers 409 AlreadyExists, whoever sent it. That is the
whole of the cross-replica protocol; nothing here is trusted in memory.

Every call runs in a worker thread with a timeout (the kubernetes client is
synchronous) and reads raw JSON (``_preload_content=False``). An API error other
than the expected 404/409 becomes :class:`~webhook.allocator.StoreUnavailable`,
with the status and a trimmed reason.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import kubernetes.client
import urllib3
from kubernetes.client.exceptions import ApiException

from webhook.allocator import Reservation, StoreUnavailable, lease_name, node_hash
from webhook.cidr import CidrError, IPNetwork, parse_cidr

__all__ = ["LABEL_MANAGED", "LeaseStore"]

LABEL_MANAGED = ("app.kubernetes.io/managed-by", "flannel-guard")
LABEL_NODE_HASH = "flannel-guard.io/node-hash"
ANNOTATION_NODE = "flannel-guard.io/node"
ANNOTATION_CIDR = "flannel-guard.io/cidr"
_TIMEOUT = (3.0, 5.0)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: object) -> float:
    if not isinstance(text, str):
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _reservation(lease: dict[str, Any]) -> Reservation | None:
    meta = lease.get("metadata") or {}
    spec = lease.get("spec") or {}
    annotations = meta.get("annotations") or {}
    try:
        cidr = parse_cidr(annotations.get(ANNOTATION_CIDR, "")).network
    except CidrError:
        return None
    node = spec.get("holderIdentity") or annotations.get(ANNOTATION_NODE) or ""
    created = _parse_time(spec.get("acquireTime")) or _parse_time(meta.get("creationTimestamp"))
    return Reservation(cidr=cidr, node=str(node), created=created)


class LeaseStore:
    """Reservations kept as Leases in ``namespace``."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, *, duration: int = 600) -> None:
        self._api = kubernetes.client.CoordinationV1Api(api)
        self._namespace = namespace
        self._duration = duration

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            resp = fn(*args, _preload_content=False, _request_timeout=_TIMEOUT, **kwargs)
            data = resp.data
            return json.loads(data) if data else {}

        try:
            return await asyncio.to_thread(run)
        except ApiException:
            raise
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise StoreUnavailable(f"Kubernetes API unreachable: {type(e).__name__}: {str(e)[:160]}") from e

    def _body(self, cidr: IPNetwork, node: str) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": lease_name(cidr),
                "namespace": self._namespace,
                "labels": {LABEL_MANAGED[0]: LABEL_MANAGED[1], LABEL_NODE_HASH: node_hash(node)},
                "annotations": {ANNOTATION_NODE: node, ANNOTATION_CIDR: str(cidr)},
            },
            "spec": {"holderIdentity": node, "acquireTime": _now(),
                     "leaseDurationSeconds": self._duration},
        }

    async def claim(self, cidr: IPNetwork, node: str) -> str:
        for _ in range(3):
            try:
                await self._call(self._api.create_namespaced_lease, self._namespace, self._body(cidr, node))
                return node
            except ApiException as e:
                if e.status != 409:
                    raise _unavailable("create", e) from e
            try:
                held = await self._call(self._api.read_namespaced_lease, lease_name(cidr), self._namespace)
            except ApiException as e:
                if e.status == 404:
                    continue  # reclaimed between our create and our read: try again
                raise _unavailable("read", e) from e
            found = _reservation(held)
            return found.node if found else "(unknown holder)"
        raise StoreUnavailable(f"Lease {lease_name(cidr)} keeps appearing and disappearing")

    async def _list(self, selector: str) -> list[Reservation]:
        try:
            doc = await self._call(self._api.list_namespaced_lease, self._namespace, label_selector=selector)
        except ApiException as e:
            raise _unavailable("list", e) from e
        out = []
        for item in doc.get("items") or []:
            r = _reservation(item) if isinstance(item, dict) else None
            if r is not None:
                out.append(r)
        return out

    async def of_node(self, node: str) -> list[IPNetwork]:
        selector = f"{LABEL_MANAGED[0]}={LABEL_MANAGED[1]},{LABEL_NODE_HASH}={node_hash(node)}"
        return [r.cidr for r in await self._list(selector) if r.node == node]

    async def all(self) -> list[Reservation]:
        return await self._list(f"{LABEL_MANAGED[0]}={LABEL_MANAGED[1]}")

    async def release(self, cidr: IPNetwork) -> None:
        try:
            await self._call(self._api.delete_namespaced_lease, lease_name(cidr), self._namespace)
        except ApiException as e:
            if e.status != 404:
                raise _unavailable("delete", e) from e


def _unavailable(verb: str, e: ApiException) -> StoreUnavailable:
    reason = (e.reason or "")[:80]
    body = (e.body.decode(errors="replace") if isinstance(e.body, bytes) else str(e.body or ""))[:160]
    return StoreUnavailable(f"Lease {verb} answered {e.status} {reason}: {body}")

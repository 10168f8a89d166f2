"""Claims as ``coordination.k8s.io/v1`` Leases: the claim store of a real cluster, and its watch.

One Lease per claimed CIDR, named by :func:`~webhook.control.allocator.lease_name`, in
the webhook's own namespace, its holder the node's name. The API server's create
is exclusive: a second create of the same name answers 409 AlreadyExists,
whoever sent it. That is the whole of the cross-replica protocol.

:class:`LeaseStore` writes (create, renew, conditional delete) and puts what
each write tells into the replica's :class:`~webhook.core.claims.ClaimBook` at once;
:class:`LeaseWatcher` keeps the same book current with every other replica's
writes by a list + watch, so that a review reads claims without a round trip.

Every call runs in a worker thread with a timeout (the kubernetes client is
synchronous) and reads raw JSON (``_preload_content=False``). An API error other
than the expected 404/409 becomes :class:`~webhook.control.allocator.StoreUnavailable`,
with the status and a trimmed reason.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import kubernetes.client
import urllib3
from kubernetes.client.exceptions import ApiException

from webhook.control.allocator import StoreUnavailable, lease_name, node_hash
from webhook.core.cidr import CidrError, IPNetwork, parse_cidr
from webhook.core.claims import Claim, ClaimBook, newer
from webhook.kube.raw import raw_request, raw_response
from webhook.kube.watch import Reflector

__all__ = ["LABEL_MANAGED", "LeaseStore", "LeaseWatcher", "claim_of", "lease_times"]

LABEL_MANAGED = ("app.kubernetes.io/managed-by", "flannel-guard")
LABEL_NODE_HASH = "flannel-guard.io/node-hash"
ANNOTATION_NODE = "flannel-guard.io/node"
ANNOTATION_CIDR = "flannel-guard.io/cidr"
SELECTOR = f"{LABEL_MANAGED[0]}={LABEL_MANAGED[1]}"
_TIMEOUT = (3.0, 5.0)


def _format(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: object) -> float:
    if not isinstance(text, str):
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def lease_times(lease: dict[str, Any]) -> tuple[float, float]:
    """``(acquired, renewed)`` of a Lease, seconds since the epoch (0: absent). The orphan rule
    measures the first: the earlier of spec.acquireTime and metadata.creationTimestamp, the
    latter being the API server's own, which no Lease writer can move (a rewritten acquireTime
    makes no claim younger). ``renewed``: spec.renewTime, else the acquisition."""
    meta = lease.get("metadata") if isinstance(lease.get("metadata"), dict) else {}
    spec = lease.get("spec") if isinstance(lease.get("spec"), dict) else {}
    times = [t for t in (_parse_time(spec.get("acquireTime")), _parse_time(meta.get("creationTimestamp")))
             if t]
    acquired = min(times) if times else 0.0
    return acquired, _parse_time(spec.get("renewTime")) or acquired


def claim_of(lease: object) -> Claim | None:
    """The claim a Lease object records (None for a Lease that is not one of ours, or is damaged)."""
    if not isinstance(lease, dict):
        return None
    meta = lease.get("metadata") if isinstance(lease.get("metadata"), dict) else {}
    spec = lease.get("spec") if isinstance(lease.get("spec"), dict) else {}
    annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
    text = annotations.get(ANNOTATION_CIDR)
    if not isinstance(text, str):
        return None
    try:
        cidr = parse_cidr(text).network
    except CidrError:
        return None
    node = spec.get("holderIdentity") or annotations.get(ANNOTATION_NODE) or ""
    # Acquisition apart from renewal: the orphan rule measures the first, whatever the second says.
    acquired, since = lease_times(lease)
    return Claim(cidr=cidr, node=str(node)[:253], since=since, uid=str(meta.get("uid") or ""),
                 version=str(meta.get("resourceVersion") or ""), acquired=acquired,
                 lease=str(meta.get("name") or "")[:253])


class LeaseStore:
    """Claims kept as Leases in ``namespace``; every answer also updates ``book``."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, book: ClaimBook, *,
                 duration: int = 600, clock: Any = None) -> None:
        self._client = api
        self._namespace = namespace
        self._duration = duration
        self.book = book
        self._clock = clock or time.time

    def _path(self, name: str | None = None) -> str:
        base = f"/apis/coordination.k8s.io/v1/namespaces/{self._namespace}/leases"
        return f"{base}/{name}" if name else base

    async def _call(self, operation: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request through the ApiClient's own transport and auth, raw JSON both ways.

        Not the generated ``*_namespaced_lease`` methods: their pydantic ``validate_call``
        builds and re-serialises a V1Lease per call, ~215 µs of a claimed write's CPU
        (bench/RESULTS.md, issue 16). Auth (token refresh, client certificates) is the
        ApiClient's ``param_serialize``, as in those methods.
        """
        def run() -> dict[str, Any]:
            data = raw_request(self._client, operation, path, body=body, timeout=_TIMEOUT)
            return json.loads(data) if data else {}

        try:
            return await asyncio.to_thread(run)
        except ApiException:
            raise
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise StoreUnavailable(f"Kubernetes API unreachable: {type(e).__name__}: {str(e)[:160]}") from e

    def _body(self, cidr: IPNetwork, node: str, at: float, acquired: float = 0.0) -> dict[str, Any]:
        stamp = _format(at)
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": lease_name(cidr),
                "namespace": self._namespace,
                "labels": {LABEL_MANAGED[0]: LABEL_MANAGED[1], LABEL_NODE_HASH: node_hash(node)},
                "annotations": {ANNOTATION_NODE: node, ANNOTATION_CIDR: str(cidr)},
            },
            "spec": {"holderIdentity": node, "acquireTime": _format(acquired) if acquired else stamp,
                     "renewTime": stamp,
                     "leaseDurationSeconds": self._duration},
        }

    def _learn(self, doc: dict[str, Any]) -> Claim | None:
        claim = claim_of(doc)
        if claim is not None and newer(claim, self.book.get(claim.cidr)):
            self.book.put(claim)
        return claim

    async def create(self, cidr: IPNetwork, node: str) -> Claim:
        """Claim ``cidr`` for ``node``: our new claim, or whoever holds it already (409)."""
        for _ in range(3):
            try:
                doc = await self._call("create_namespaced_lease", self._path(),
                                       self._body(cidr, node, self._clock()))
                claim = self._learn(doc)
                if claim is None:  # an API that answers without the object: trust our own body
                    claim = Claim(cidr, node, self._clock())
                    self.book.put(claim)
                return claim
            except ApiException as e:
                if e.status != 409:
                    raise _unavailable("create", e) from e
            try:
                held = await self._call("read_namespaced_lease", self._path(lease_name(cidr)))
            except ApiException as e:
                if e.status == 404:
                    continue  # reclaimed between our create and our read: try again
                raise _unavailable("read", e) from e
            found = self._learn(held)
            if found is not None and self.book.gate is not None and self.book.gate(found) is not None:
                # Not a claim (planted, or its time is in the future): it holds nothing, and it
                # must not hold the name either. Deleted only as the version read, then created.
                await self.delete(found)
                continue
            return found or Claim(cidr, "(unknown holder)", 0.0)
        raise StoreUnavailable(f"Lease {lease_name(cidr)} keeps appearing and disappearing")

    async def renew(self, claim: Claim) -> Claim | None:
        """Confirm ``claim`` still stands and move its time on (None: it is gone or changed hands).

        A replace conditional on the Lease's resourceVersion: a concurrent release of
        the same Lease (:meth:`delete` with the older version) then fails instead.
        """
        for attempt in range(2):
            # A renewal moves renewTime only: the acquisition stays what the orphan rule measures.
            body = self._body(claim.cidr, claim.node, self._clock(), claim.acquired_at)
            if claim.version:
                body["metadata"]["resourceVersion"] = claim.version
            try:
                doc = await self._call("replace_namespaced_lease", self._path(lease_name(claim.cidr)), body)
                return self._learn(doc)
            except ApiException as e:
                if e.status == 404:
                    self.book.drop(claim.cidr, uid=claim.uid)
                    return None
                if e.status != 409:
                    raise _unavailable("renew", e) from e
            # 409: our version is old (another replica renewed it): read, and renew once more if
            # the node still holds it.
            try:
                held = claim_of(await self._call("read_namespaced_lease", self._path(lease_name(claim.cidr))))
            except ApiException as e:
                if e.status == 404:
                    self.book.drop(claim.cidr, uid=claim.uid)
                    return None
                raise _unavailable("read", e) from e
            if held is None or held.node != claim.node or attempt:
                return None
            claim = held
        return None

    async def delete(self, claim: Claim) -> bool:
        """Delete the Lease of ``claim``, only if it is still that version (False: gone or changed)."""
        options: dict[str, Any] = {}
        if claim.version or claim.uid:
            pre: dict[str, str] = {}
            if claim.version:
                pre["resourceVersion"] = claim.version
            if claim.uid:
                pre["uid"] = claim.uid
            options = {"preconditions": pre}
        try:
            await self._call("delete_namespaced_lease", self._path(claim.lease or lease_name(claim.cidr)),
                             options or None)
        except ApiException as e:
            if e.status == 404:
                self.book.drop(claim.cidr, uid=claim.uid, lease=claim.lease)
                return False
            if e.status == 409:
                return False
            raise _unavailable("delete", e) from e
        self.book.drop(claim.cidr, uid=claim.uid, lease=claim.lease)
        return True


class LeaseWatcher(Reflector):
    """List + watch flannel-guard's Leases in ``namespace`` into ``book``."""

    what = "lease"

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, book: ClaimBook,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._api = api
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self._book = book

    def _call(self, *, watch: bool = False, **kwargs: Any) -> Any:
        if watch:
            return raw_response(self._api, "list_namespaced_lease", self._path, label_selector=SELECTOR,
                                watch=True, **kwargs)
        return raw_response(self._api, "list_namespaced_lease", self._path, label_selector=SELECTOR,
                            **kwargs)

    def _parse(self, obj: dict[str, Any]) -> Claim | None:
        return claim_of(obj)

    def _key(self, obj: dict[str, Any]) -> Claim | None:
        return claim_of(obj)

    def _replace(self, entries: list[Any]) -> None:
        self._book.replace_all(entries)

    def _upsert(self, entry: Any) -> None:
        if newer(entry, self._book.get(entry.cidr)):
            self._book.put(entry)

    def _delete(self, key: Any) -> None:
        self._book.drop(key.cidr, uid=key.uid, lease=key.lease)


def _unavailable(verb: str, e: ApiException) -> StoreUnavailable:
    reason = (e.reason or "")[:80]
    body = (e.body.decode(errors="replace") if isinstance(e.body, bytes) else str(e.body or ""))[:160]
    return StoreUnavailable(f"Lease {verb} answered {e.status} {reason}: {body}")

"""Mutating mode: choose a free podCIDR for a Node and reserve it durably before answering.

The choice is pure (:class:`webhook.core.cidrset.DualStackAllocator`, kept in step
with the node index); the reservation is I/O behind :class:`ReservationStore`.

Never the same CIDR twice, across replicas: a reservation is one
``coordination.k8s.io/v1`` Lease per CIDR in the webhook's namespace, with a
name derived from the CIDR (:func:`lease_name`). Creating a Lease that exists
answers 409 in the API server itself (etcd's create-if-absent), so of two
replicas racing for one CIDR exactly one wins; the other reads the Lease, and
moves away (:mod:`webhook.core.spread`) unless the Lease is for the same node (a
retried admission: the same CIDR comes back). No in-process lock is trusted across
replicas; the in-process lock only keeps this replica's own choices in order.

Reservations are short-lived: once older than the grace period a Lease is
deleted. If its node exists by then, the Node's own ``spec.podCIDRs`` is the
durable record (and the index keeps the CIDR occupied); if not (the node was
refused later in the admission chain, or the review was forged), the CIDR is
free again. Reclaiming never frees a CIDR that a node in the index still uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog

from webhook.core.cidr import IPNetwork
from webhook.core.cidrset import CidrSet, RangeExhaustedError
from webhook.core.claimpolicy import LEASE_PREFIX, lease_name, renewable
from webhook.core.claims import Claim, ClaimBook
from webhook.core.dualstack import DualStackAllocator
from webhook.core.nodeindex import NodeCidrIndex
from webhook.core.spread import Walks, jump_index

if TYPE_CHECKING:
    from webhook.control.pending import PendingClaims

__all__ = [
    "LEASE_PREFIX",
    "ORDERS",
    "Allocator",
    "ClaimStore",
    "ClaimWithheld",
    "MemoryStore",
    "RangeExhaustedError",
    "Reservation",
    "ReservationStore",
    "StoreUnavailable",
    "lease_name",
    "node_hash",
    "reclaim_expired",
]

log = structlog.get_logger("flannel_guard.allocator")

#: The candidate orders ``make bench-storm`` compares (bench/storm_serve.py); ``spread`` ships.
ORDERS = ("next-fit", "jump", "spread")
#: What :meth:`Allocator.assign` reports per claim: a new claim won, a held one renewed, a
#: create that lost a race to another node's claim, a write the API did not take.
OUTCOMES = ("claimed", "renewed", "lost", "unavailable")


class StoreUnavailable(Exception):
    """Raised when a claim cannot be read or written (the API is unreachable or refuses)."""


class ClaimWithheld(Exception):
    """No claim is made for this node now (issue 28): the pending cap is reached, or its name is
    not stored and its claim is past the orphan age. The Node is admitted without a podCIDR;
    the assigning loop gives it one once it is stored."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """A CIDR held for a node since ``created`` (seconds since the epoch): what a reclaim freed."""

    cidr: IPNetwork
    node: str
    created: float


class ClaimStore(Protocol):
    """Where claims live: the Kubernetes API (Leases), or memory in standalone mode.

    Every method also records what it learns in :attr:`book`.
    """

    book: ClaimBook

    async def create(self, cidr: IPNetwork, node: str) -> Claim:
        """Claim ``cidr`` for ``node`` exclusively; return the claim that holds it now (maybe another's)."""
        ...

    async def renew(self, claim: Claim) -> Claim | None:
        """Confirm ``claim`` and move its time on; None when it is gone or another holds it."""
        ...

    async def delete(self, claim: Claim) -> bool:
        """Delete ``claim`` if it is still that version; False when gone or changed."""
        ...


#: Kept for readers of older code: a reservation store is a claim store.
ReservationStore = ClaimStore


def node_hash(node: str) -> str:
    """A label value for a node name (names may be longer than a label value's 63 characters)."""
    return hashlib.sha256(node.encode()).hexdigest()[:40]


class MemoryStore:
    """Claims in this process's memory: ``--standalone`` mode, with the Leases' rules.

    A create is exclusive (the first holder stays), versions count writes, and a
    delete or renew of an older version fails as a conditional write to the API would.
    """

    def __init__(self, book: ClaimBook | None = None, clock: Callable[[], float] = time.time) -> None:
        self.book = book if book is not None else ClaimBook()
        self._clock = clock
        self._writes = 0

    def _version(self) -> str:
        self._writes += 1
        return str(self._writes)

    async def create(self, cidr: IPNetwork, node: str) -> Claim:
        held = self.book.get(cidr)
        if held is not None:
            return held
        now = self._clock()
        claim = Claim(cidr, node, now, uid=f"memory-{self._writes + 1}", version=self._version(),
                      acquired=now)
        self.book.put(claim)
        return claim

    async def renew(self, claim: Claim) -> Claim | None:
        held = self.book.get(claim.cidr)
        if held is None or held.node != claim.node:
            return None
        renewed = Claim(held.cidr, held.node, self._clock(), uid=held.uid, version=self._version(),
                        acquired=held.acquired_at)
        self.book.put(renewed)
        return renewed

    async def delete(self, claim: Claim) -> bool:
        held = self.book.get(claim.cidr)
        if held is None or (claim.version and held.version != claim.version):
            return False
        return self.book.drop(claim.cidr)


class Allocator:
    """Assigns each Node one free CIDR per cluster-cidr family, claimed in a :class:`ClaimStore`.

    The free sets follow two sources: the stored Nodes (``index``) and the claims
    known to this replica (``store.book``); a CIDR is free only when neither holds it.

    Candidates come in next-fit order; while ``follower()`` (another replica leads) from this
    replica's own region, an offset derived from ``identity``, and a lost race jumps away from
    the other's front (:mod:`webhook.core.spread`, issue 26). ``order`` (a class attribute, for
    the benchmark) selects ``next-fit`` alone, ``jump`` alone, or both (``spread``).
    """

    order = "spread"

    def __init__(
        self,
        cluster_cidr: Sequence[IPNetwork],
        *,
        index: NodeCidrIndex,
        store: ClaimStore,
        mask_v4: int = 24,
        mask_v6: int = 64,
        grace: float = 600.0,
        clock: Callable[[], float] = time.time,
        service_ranges: Sequence[IPNetwork] = (),
        pending: PendingClaims | None = None,
        identity: str = "",
        follower: Callable[[], bool] | None = None,
    ) -> None:
        self._alloc = DualStackAllocator.from_index(cluster_cidr, index, mask_v4=mask_v4, mask_v6=mask_v6)
        # Another replica leads: walk this replica's own region (None: always, given an identity).
        self._walks, self._follower = Walks(identity), follower or (lambda: True)
        # Jumps made per family: a race lost by a claim taken before the last jump is the same
        # meeting of fronts, not a new one (a burst loses several in flight at once).
        self._jumps: dict[int, int] = {}
        # As kube-controller-manager's range allocator (range_allocator.go filterOutServiceRange):
        # every node block that overlaps the service range is used.
        self._service = tuple(service_ranges)
        self._alloc.occupy(self._service)
        self._index = index
        self._store = store
        self._book = store.book
        self._grace = grace
        self._clock = clock
        # The cap on claims for nodes not stored, and the orphan age (None: neither, as in tests).
        self._pending = pending
        self._inflight: dict[str, asyncio.Future[tuple[IPNetwork, ...]]] = {}
        self._alloc.occupy(c.cidr for c in self._book)
        self._closed = False
        index.subscribe(self._on_index_change)
        self._book.subscribe(self._on_claim_change)

    @property
    def sets(self) -> tuple[CidrSet, ...]:
        return self._alloc.sets

    @property
    def store(self) -> ClaimStore:
        return self._store

    def close(self) -> None:
        """Stop following the index and the book (a replaced allocator: the cluster-cidr changed)."""
        self._closed = True

    def _on_index_change(self, node: str, removed: tuple[IPNetwork, ...],
                         added: tuple[IPNetwork, ...]) -> None:
        if self._closed:
            return
        self._alloc.occupy(added)
        for cidr in removed:
            if cidr not in added:
                self._free_if_unused(cidr)

    def _on_claim_change(self, cidr: IPNetwork, held: bool) -> None:
        if self._closed:
            return
        if held:
            self._alloc.occupy([cidr])
        else:
            self._free_if_unused(cidr)

    def _free_if_unused(self, cidr: IPNetwork) -> None:
        """Release ``cidr`` in the sets, then re-occupy whatever still uses any part of it."""
        self._alloc.release([cidr])
        for _, other in self._index.overlapping(cidr, limit=1 << 20):
            self._alloc.occupy([other])
        for _, other in self._book.index.overlapping(cidr, limit=1 << 20):
            self._alloc.occupy([other])
        self._alloc.occupy(n for n in self._service
                           if n.version == cidr.version and n.overlaps(cidr))  # type: ignore[arg-type]

    def _held(self, node: str) -> dict[int, Claim]:
        """The node's claims that fit the current sets, one per family."""
        out: dict[int, Claim] = {}
        for claim in self._book.of_node(node):
            s = self._alloc.set_for(claim.cidr)
            if s is None or claim.cidr.prefixlen != s.mask or not claim.cidr.subnet_of(s.cluster):  # type: ignore[arg-type]
                continue
            out.setdefault(claim.cidr.version, claim)
        return out

    def preview(self, node: str | None = None) -> tuple[IPNetwork, ...]:
        """The CIDRs an assignment would give (dry run: nothing is written)."""
        held = self._held(node) if node else {}
        out = []
        for s in self._alloc.sets:
            if s.cluster.version in held:
                out.append(held[s.cluster.version].cidr)
                continue
            candidate = next(iter(s.candidates()), None)
            if candidate is None:
                raise s.exhausted_error()
            out.append(candidate)
        return tuple(out)

    async def assign(self, node: str, *, dry_run: bool = False,
                     report: Callable[[str], None] | None = None) -> tuple[IPNetwork, ...]:
        """One CIDR per family for ``node``, claimed before returning (unless ``dry_run``).

        A node that holds claims already (a retried admission, on this replica or
        another) gets them back, each confirmed by a renewal. Raises
        :class:`RangeExhaustedError` when a family has no free CIDR left and
        :class:`StoreUnavailable` when a claim cannot be written; nothing this
        call claimed is left behind then. Assignments of different nodes run
        concurrently (each takes its candidate before it awaits the API); two of
        the same node share one. ``report`` is called with each claim's outcome
        (:data:`OUTCOMES`) by the call that runs the assignment.
        """
        if dry_run:
            return self.preview(node)
        running = self._inflight.get(node)
        if running is None:
            running = asyncio.ensure_future(self._assign(node, report or (lambda _: None)))
            self._inflight[node] = running
            running.add_done_callback(lambda _: self._inflight.pop(node, None))
        return await asyncio.shield(running)

    def _withhold(self, node: str, held: dict[int, Claim]) -> None:
        """Raise :class:`ClaimWithheld` when ``node`` may not renew or make its claims now."""
        gate = self._pending
        if gate is None:
            return
        stored = gate.stored(node)
        now = self._clock()
        for claim in held.values():
            if not renewable(claim.acquired_at, stored, now, gate.policy().orphan_after):
                raise ClaimWithheld(f"node {node[:60]} is not stored and its claim of {claim.cidr} is"
                                    " past the orphan age: not renewed")
        wanted = [s.cluster.version for s in self._alloc.sets if s.cluster.version not in held]
        if not gate.admits(node, wanted):
            raise ClaimWithheld(f"not claimed: {gate.describe()}")

    async def _assign(self, node: str, report: Callable[[str], None]) -> tuple[IPNetwork, ...]:
        held = self._held(node)
        self._withhold(node, held)
        won: list[IPNetwork] = []
        created: list[IPNetwork] = []
        try:
            for s in self._alloc.sets:
                earlier = held.get(s.cluster.version)
                if earlier is not None and (renewed := await self._store.renew(earlier)) is not None:
                    report("renewed")
                    won.append(renewed.cidr)
                    continue
                cidr = await self._claim_one(s, node, report)
                created.append(cidr)
                won.append(cidr)
        except StoreUnavailable:
            report("unavailable")
            await self._undo(node, created)
            raise
        except BaseException:
            await self._undo(node, created)
            raise
        return tuple(won)

    async def _undo(self, node: str, created: list[IPNetwork]) -> None:
        """Delete what an assignment that failed halfway created (all or nothing)."""
        if created:
            for cidr in created:
                claim = self._book.get(cidr)
                if claim is not None and claim.node == node:
                    with contextlib.suppress(StoreUnavailable):
                        await self._store.delete(claim)

    async def _claim_one(self, s: CidrSet, node: str, report: Callable[[str], None]) -> IPNetwork:
        family = s.cluster.version
        own = self.order == "spread" and self._follower()
        if (target := self._walks.switch(family, s.capacity, s.next_candidate, own)) is not None:
            s.rewind(s.cidr_at(target))
        while True:
            # Pick and take with no await in between: concurrent assignments never pick the same.
            candidate = next(iter(s.candidates()), None)
            if candidate is None:
                raise s.exhausted_error()
            s.take(candidate)
            jumps = self._jumps.get(family, 0)
            try:
                claim = await self._store.create(candidate, node)
            except BaseException:
                # Maybe stored, the answer lost: the retry tries this candidate first (its 409
                # held by the same node is this node's claim).
                self._free_if_unused(candidate)
                s.rewind(candidate)
                raise
            if claim.node == node:
                report("claimed")
                return candidate
            report("lost")
            log.info("cidr claimed by another", cidr=str(candidate), holder=claim.node[:253])
            if self.order != "next-fit" and self._jumps.get(family, 0) == jumps:
                # Another replica's front is here: go where no front is (the largest free run).
                self._jumps[family] = jumps + 1
                target = jump_index(s.occupied_index_ranges(), s.capacity)
                if target is not None:
                    s.rewind(s.cidr_at(target))

    async def reclaim(self) -> list[Reservation]:
        """Delete claims older than the grace period (:func:`reclaim_expired`)."""
        return await reclaim_expired(self._store, self._index, self._grace, self._clock())


async def reclaim_expired(store: ClaimStore, index: NodeCidrIndex, grace: float,
                          now: float) -> list[Reservation]:
    """Delete the claims older than ``grace`` seconds; the CIDRs no stored node uses become free.

    Read from the book (kept by the Lease watch): no list call. Each delete is
    conditional on the version seen, so a claim renewed meanwhile stays.
    """
    reclaimed = []
    for claim in store.book:
        if now - claim.since < grace:
            continue
        if await store.delete(claim):
            used = bool(index.overlapping(claim.cidr, limit=1))
            reclaimed.append(Reservation(claim.cidr, claim.node, claim.since))
            log.info("claim reclaimed", cidr=str(claim.cidr), node=claim.node[:253], node_has_it=used)
    return reclaimed

"""Mutating mode: choose a free podCIDR for a Node and reserve it durably before answering.

The choice is pure (:class:`webhook.cidrset.DualStackAllocator`, kept in step
with the node index); the reservation is I/O behind :class:`ReservationStore`.

Never the same CIDR twice, across replicas: a reservation is one
``coordination.k8s.io/v1`` Lease per CIDR in the webhook's namespace, with a
name derived from the CIDR (:func:`lease_name`). Creating a Lease that exists
answers 409 in the API server itself (etcd's create-if-absent), so of two
replicas racing for one CIDR exactly one wins; the other reads the Lease, and
moves on to the next candidate unless the Lease is for the same node (a retried
admission: the same CIDR comes back). No in-process lock is trusted across
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
from typing import Protocol

import structlog

from webhook.cidr import IPNetwork, NodeCidrIndex
from webhook.cidrset import CidrSet, DualStackAllocator, RangeExhaustedError

__all__ = [
    "Allocator",
    "MemoryStore",
    "RangeExhaustedError",
    "Reservation",
    "ReservationStore",
    "StoreUnavailable",
    "lease_name",
    "node_hash",
]

log = structlog.get_logger("flannel_guard.allocator")

LEASE_PREFIX = "podcidr-"


class StoreUnavailable(Exception):
    """Raised when a reservation cannot be read or written (the API is unreachable or refuses)."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """A CIDR held for a node since ``created`` (seconds since the epoch)."""

    cidr: IPNetwork
    node: str
    created: float


class ReservationStore(Protocol):
    """Where reservations live: the Kubernetes API (Leases), or memory in standalone mode."""

    async def claim(self, cidr: IPNetwork, node: str) -> str:
        """Create the reservation of ``cidr`` for ``node``; return who holds it now."""
        ...

    async def of_node(self, node: str) -> list[IPNetwork]:
        """The CIDRs reserved for ``node``."""
        ...

    async def all(self) -> list[Reservation]:
        """Every reservation."""
        ...

    async def release(self, cidr: IPNetwork) -> None:
        """Delete the reservation of ``cidr`` (absent is fine)."""
        ...


def lease_name(cidr: IPNetwork) -> str:
    """A DNS-1123 name that is a function of the CIDR alone, e.g. ``podcidr-v4-10-244-1-0-24``."""
    if cidr.version == 4:
        return f"{LEASE_PREFIX}v4-{str(cidr.network_address).replace('.', '-')}-{cidr.prefixlen}"
    return f"{LEASE_PREFIX}v6-{cidr.network_address.exploded.replace(':', '')}-{cidr.prefixlen}"


def node_hash(node: str) -> str:
    """A label value for a node name (names may be longer than a label value's 63 characters)."""
    return hashlib.sha256(node.encode()).hexdigest()[:40]


class MemoryStore:
    """Reservations in this process's memory: ``--standalone`` mode, same rules as Leases."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._held: dict[IPNetwork, Reservation] = {}
        self._clock = clock

    async def claim(self, cidr: IPNetwork, node: str) -> str:
        held = self._held.setdefault(cidr, Reservation(cidr, node, self._clock()))
        return held.node

    async def of_node(self, node: str) -> list[IPNetwork]:
        return [r.cidr for r in self._held.values() if r.node == node]

    async def all(self) -> list[Reservation]:
        return list(self._held.values())

    async def release(self, cidr: IPNetwork) -> None:
        self._held.pop(cidr, None)


class Allocator:
    """Assigns each Node one free CIDR per cluster-cidr family, reserved in a :class:`ReservationStore`."""

    def __init__(
        self,
        cluster_cidr: Sequence[IPNetwork],
        *,
        index: NodeCidrIndex,
        store: ReservationStore,
        mask_v4: int = 24,
        mask_v6: int = 64,
        grace: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._alloc = DualStackAllocator.from_index(cluster_cidr, index, mask_v4=mask_v4, mask_v6=mask_v6)
        self._index = index
        self._store = store
        self._grace = grace
        self._clock = clock
        self._lock = asyncio.Lock()
        # Reservations this replica knows of (its own, and others' met as a 409 or in a reclaim pass).
        self._reserved: dict[IPNetwork, str] = {}
        index.subscribe(self._on_index_change)

    @property
    def sets(self) -> tuple[CidrSet, ...]:
        return self._alloc.sets

    def _on_index_change(self, node: str, removed: tuple[IPNetwork, ...],
                         added: tuple[IPNetwork, ...]) -> None:
        self._alloc.occupy(added)
        for cidr in removed:
            if cidr not in added:
                self._free_if_unused(cidr)

    def _free_if_unused(self, cidr: IPNetwork) -> None:
        """Release ``cidr`` in the sets, then re-occupy whatever still uses any part of it."""
        self._alloc.release([cidr])
        for _, other in self._index.overlapping(cidr, limit=1 << 20):
            self._alloc.occupy([other])
        for held in self._reserved:
            if held.version == cidr.version and held.overlaps(cidr):  # type: ignore[arg-type]
                self._alloc.occupy([held])

    def preview(self) -> tuple[IPNetwork, ...]:
        """The CIDRs the next assignment would try first (dry run: nothing is written)."""
        out = []
        for s in self._alloc.sets:
            candidate = next(iter(s.candidates()), None)
            if candidate is None:
                raise s.exhausted_error()
            out.append(candidate)
        return tuple(out)

    async def assign(self, node: str, *, dry_run: bool = False) -> tuple[IPNetwork, ...]:
        """One CIDR per family for ``node``, reserved before returning (unless ``dry_run``).

        Raises :class:`RangeExhaustedError` when a family has no free CIDR left
        and :class:`StoreUnavailable` when the reservation cannot be written.
        """
        existing = await self._store.of_node(node)
        families = [s.cluster.version for s in self.sets]
        if existing and {c.version for c in existing} >= set(families):
            # A retried admission of the same node (on this replica or another): same answer.
            ordered = tuple(next(c for c in existing if c.version == v) for v in families)
            self._alloc.occupy(ordered)
            return ordered
        async with self._lock:
            if dry_run:
                return self.preview()
            won: list[IPNetwork] = []
            try:
                for s in self._alloc.sets:
                    earlier = next((c for c in existing if c.version == s.cluster.version), None)
                    if earlier is not None:  # a family reserved by an attempt cut short
                        self._alloc.occupy([earlier])
                        won.append(earlier)
                    else:
                        won.append(await self._claim_one(s, node))
            except BaseException:
                for cidr in won:
                    with contextlib.suppress(StoreUnavailable):
                        await self._store.release(cidr)
                    self._reserved.pop(cidr, None)
                    self._free_if_unused(cidr)
                raise
            return tuple(won)

    async def _claim_one(self, s: CidrSet, node: str) -> IPNetwork:
        for candidate in s.candidates():
            holder = await self._store.claim(candidate, node)
            self._reserved[candidate] = holder
            s.take(candidate)
            if holder == node:
                return candidate
            log.info("cidr reserved by another", cidr=str(candidate), holder=holder[:253])
        raise s.exhausted_error()

    async def reclaim(self) -> list[Reservation]:
        """Delete reservations older than the grace period; free the CIDRs no node uses."""
        now = self._clock()
        reclaimed = []
        for r in await self._store.all():
            if now - r.created < self._grace:
                self._reserved.setdefault(r.cidr, r.node)
                self._alloc.occupy([r.cidr])
                continue
            await self._store.release(r.cidr)
            async with self._lock:
                self._reserved.pop(r.cidr, None)
                used = self._index.overlapping(r.cidr, limit=1)
                if not used:
                    self._free_if_unused(r.cidr)
            reclaimed.append(r)
            log.info("reservation reclaimed", cidr=str(r.cidr), node=r.node[:253],
                     node_has_it=bool(used))
        return reclaimed

    async def run_reclaimer(self, interval: float = 60.0) -> None:
        """Reclaim every ``interval`` seconds until cancelled; errors never end the loop."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reclaim()
            except StoreUnavailable as e:
                log.warning("reclaim skipped: reservations unreadable", error=str(e)[:256])
            except Exception:
                log.exception("reclaim failed")

"""Claims for the writes that give a Node its podCIDR: the validating webhook's side of the promise.

Every admitted write that sets podCIDRs (a Node CREATE that carries them, an
UPDATE from none to some) claims each CIDR first, with the same exclusive create
the allocator uses (:class:`~webhook.control.allocator.ClaimStore`). The decisions are
pure (:mod:`webhook.core.claims`); this class only orders the writes:

1. a conflict already known in memory (another node's claim, another stored
   Node) refuses at once, without a round trip;
2. a fresh claim of the same node's (the mutating webhook's, a moment ago, on
   this replica) is confirmed without a write;
3. every other CIDR is created exclusively; the API's 409 decides between
   replicas, and a 409 held by the same node (a retry) is that node's claim;
4. if a later CIDR of the write is refused, the earlier ones this call created
   are deleted again (all or nothing).

A deleted Node releases its claims (:meth:`Claimer.release_node`): only claims
made before the node entered this replica's index, and each delete is
conditional on the Lease's version, so that a node re-registering under the same
name keeps the claim it has just renewed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import structlog

from webhook.control.allocator import ClaimStore, Reservation, StoreUnavailable, reclaim_expired
from webhook.control.pending import PendingClaims
from webhook.core.cidr import IPNetwork
from webhook.core.claimpolicy import orphan, pending
from webhook.core.claims import Claim, ClaimConflict, ClaimOutcome, conflicts, to_write
from webhook.core.nodeindex import NodeCidrIndex

__all__ = ["Claimer"]

log = structlog.get_logger("flannel_guard.claims")


class Claimer:
    """Claims podCIDRs for validated writes, in ``store`` (and its book), judged against ``index``."""

    def __init__(self, store: ClaimStore, index: NodeCidrIndex, *, fresh: float = 60.0,
                 grace: float = 600.0, clock: Callable[[], float] = time.time,
                 orphan_after: float = 120.0,
                 index_confirmed: Callable[[], float | None] | None = None,
                 pending: PendingClaims | None = None) -> None:
        self.store = store
        # The cap on claims for nodes not stored yet (None: no cap, as in unit tests).
        self.pending = pending
        self._grace = grace
        self._orphan_after = orphan_after
        # Wall-clock time of the node index's last confirmation by the API (None: never, or
        # no API: standalone keeps claims for the whole grace period).
        self._index_confirmed = index_confirmed or (lambda: None)
        self.book = store.book
        self._index = index
        self._fresh = fresh
        self._clock = clock
        # When each node entered the index (this replica's clock): the bound of what its
        # deletion releases.
        self._entered: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        index.subscribe(self._on_index_change)

    async def claim(self, node: str, wanted: Sequence[IPNetwork], *, dry_run: bool = False) -> ClaimOutcome:
        found = conflicts(node, wanted, self.book, self._index)
        if found:
            return ClaimOutcome("conflict", tuple(found))
        writes = to_write(node, wanted, self.book, self._clock(), self._fresh)
        if dry_run:
            return ClaimOutcome("dry-run")
        if not writes:
            return ClaimOutcome("known")
        new = [c for c in writes if (held := self.book.get(c)) is None or held.node != node]
        if self.pending is not None and not self.pending.admits(node, [c.version for c in new]):
            # Judged without claiming: what is known in memory was checked above; no Lease is made.
            return ClaimOutcome("capped", error=self.pending.describe())
        created: list[Claim] = []
        try:
            for cidr in writes:
                before = self.book.get(cidr)
                claim = await self.store.create(cidr, node)
                if claim.node != node:
                    await self._undo(created)
                    return ClaimOutcome("conflict", (ClaimConflict(cidr, claim.node, claim.cidr,
                                                                   claim.since or None),))
                if before is None or before.node != node:
                    created.append(claim)
        except StoreUnavailable as e:
            await self._undo(created)
            return ClaimOutcome("unavailable", error=str(e)[:200])
        return ClaimOutcome("claimed")

    async def _undo(self, created: list[Claim]) -> None:
        for claim in created:
            with contextlib.suppress(StoreUnavailable):
                await self.store.delete(self.book.get(claim.cidr) or claim)

    # -- a deleted Node frees its claims -----------------------------------------------------

    def _on_index_change(self, node: str, removed: tuple[IPNetwork, ...],
                         added: tuple[IPNetwork, ...]) -> None:
        if added:
            self._entered.setdefault(node, self._clock())
            return
        if removed and node not in self._index:
            entered = self._entered.pop(node, self._clock())
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule
                task = asyncio.get_running_loop().create_task(self.release_node(node, entered))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def release_node(self, node: str, before: float) -> int:
        """Delete ``node``'s claims made before ``before``; return how many were deleted."""
        released = 0
        for claim in self.book.of_node(node):
            if claim.since > before:
                continue
            try:
                if await self.store.delete(claim):
                    released += 1
            except StoreUnavailable as e:
                # Not lost: the reclaimer deletes it after the grace period.
                log.warning("claim of a deleted node not released", node=node[:253],
                            cidr=str(claim.cidr), error=str(e)[:200])
        if released:
            log.info("claims of a deleted node released", node=node[:253], count=released)
        return released

    # -- claims whose Node never appeared (or whose Node holds the CIDR itself by now) -------

    async def reclaim(self) -> list[Reservation]:
        """Claims past the grace period, then orphans (:meth:`release_orphans`).

        First every claim is judged again (:meth:`~webhook.core.claims.ClaimBook.retrust`):
        a time that was ahead of the clock may not be any more.
        """
        if self.book.gate is not None:
            self.book.retrust()
        out = await reclaim_expired(self.store, self._index, self._grace, self._clock())
        return out + await self.release_orphans()

    async def release_orphans(self) -> list[Reservation]:
        """Free claims whose Node never appeared, as soon as that is known, not after the grace.

        A claim is made before its Node is stored; the API server stores it within its
        webhook timeout (at most 30 s) or never (refused later in the chain, or a forged
        review). Once a claim is ``orphan_after`` seconds old *by acquisition* (renewals do
        not count), its holder does not hold that CIDR in the index (not stored, or stored
        with another podCIDR), and the index was confirmed by the API after that age was
        reached (a watch event or bookmark: events arrive in order, so a stored Node would
        have been seen), it is released (:func:`webhook.core.claimpolicy.orphan`). A forged
        Node review thus holds a CIDR for minutes at most, however often it is re-sent.
        """
        confirmed = self._index_confirmed()
        if confirmed is None:
            return []
        now = self._clock()
        freed = []
        for claim in self.book:
            # By acquisition, not renewal; a holder stored with another podCIDR is no excuse.
            if not orphan(claim.acquired_at, pending(claim.cidr, claim.node, self._index.cidrs_of), now,
                          confirmed, self._orphan_after):
                continue
            if await self.store.delete(claim):
                freed.append(Reservation(claim.cidr, claim.node, claim.since))
        if freed:
            log.info("claims of nodes that never appeared released", count=len(freed))
        return freed

    async def run_reclaimer(self, interval: float = 60.0) -> None:
        """Reclaim every ``interval`` seconds until cancelled; errors never end the loop."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reclaim()
            except StoreUnavailable as e:
                log.warning("reclaim skipped: claims not writable", error=str(e)[:256])
            except Exception:
                log.exception("reclaim failed")

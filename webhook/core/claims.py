"""Claims on podCIDRs, as pure data: who holds which CIDR, since when, and what a write may do.

A *claim* is the promise "this CIDR belongs to this node" made before the Node
carrying it is stored. Every write that gives a Node a podCIDR (the mutating
webhook's patch, kube-controller-manager's allocator, a ``kubectl patch``)
claims each CIDR first; in a live cluster a claim is one ``coordination.k8s.io``
Lease per CIDR (:mod:`webhook.kube.leases`), in standalone mode an entry in memory.

This module holds what a replica *knows* of the claims (:class:`ClaimBook`, kept
current by the Lease watch and by the replica's own writes) and the pure
decisions over it: which claims conflict with a write (:func:`conflicts`), which
still have to be written (:func:`to_write`), and the message a refused write
gets (:func:`conflict_message`). Safety never rests on the book being current:
a claim that is not already known to be this node's is written with the API's
exclusive create, which decides between replicas. The book lets a conflict known
in memory be refused without a round trip, and lets the same node's fresh claim
be confirmed without one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from webhook.core.cidr import IPNetwork
from webhook.core.nodeindex import NodeCidrIndex, first_free_in

__all__ = [
    "Claim",
    "ClaimBook",
    "ClaimConflict",
    "ClaimOutcome",
    "Untrusted",
    "conflict_message",
    "conflicts",
    "newer",
    "suggest_free",
    "to_write",
]


@dataclass(frozen=True, slots=True)
class Claim:
    """``cidr`` held by ``node`` since ``since`` (seconds since the epoch, the last write).

    ``uid`` and ``version`` are the Lease's (empty in memory, or before the API answered).
    ``acquired`` is when the claim was first made (a renewal keeps it; 0: unknown, read as
    ``since``); ``lease`` the name of the Lease that records it (empty in memory).
    """

    cidr: IPNetwork
    node: str
    since: float
    uid: str = ""
    version: str = ""
    acquired: float = 0.0
    lease: str = ""

    @property
    def acquired_at(self) -> float:
        """When the claim was made: what the orphan rule measures, however often it was renewed."""
        return self.acquired or self.since


@dataclass(frozen=True, slots=True)
class Untrusted:
    """A claim that is not believed (:func:`webhook.core.claimpolicy.distrust`), and why."""

    claim: Claim
    reason: str


@dataclass(frozen=True, slots=True)
class ClaimConflict:
    """A CIDR asked for by one node but held by another (a claim in flight, or a stored Node)."""

    wanted: IPNetwork
    holder: str
    held: IPNetwork
    since: float | None  # None: a stored node's podCIDR (no claim time)


def newer(incoming: Claim, known: Claim | None) -> bool:
    """Whether a watch event's claim may replace what the book holds for the same CIDR.

    A replica's own write reaches the book before the watch repeats it; a late event of
    an older Lease of the same name must not overwrite it. resourceVersions compare as
    integers where both are integers (etcd's revisions); otherwise the event wins.
    """
    if known is None or not known.version or not incoming.version:
        return True
    try:
        return int(incoming.version) >= int(known.version)
    except ValueError:
        return True


class ClaimBook:
    """Every claim this replica knows of: by CIDR, by holder, and an overlap index.

    Observers (the allocator's free-CIDR sets) hear ``(cidr, held)`` after each change.
    With a ``gate`` (a claim -> why it is not believed, or None), a claim the gate refuses
    never enters the book: it is kept apart in :attr:`untrusted` (by Lease, at most
    :attr:`UNTRUSTED_MAX`) to be reported, and never occupies its CIDR.
    """

    UNTRUSTED_MAX = 4096

    def __init__(self, gate: Callable[[Claim], str | None] | None = None) -> None:
        self._by_cidr: dict[IPNetwork, Claim] = {}
        self._by_node: dict[str, dict[IPNetwork, None]] = {}
        self.index = NodeCidrIndex()
        self._observers: list[Callable[[IPNetwork, bool], None]] = []
        self.gate = gate
        self.untrusted: dict[str, Untrusted] = {}
        # Bumped by every change of the trusted content (answers computed from it stay valid meanwhile).
        self.generation = 0

    def subscribe(self, observer: Callable[[IPNetwork, bool], None]) -> None:
        self._observers.append(observer)

    def __len__(self) -> int:
        return len(self._by_cidr)

    def __iter__(self) -> Iterator[Claim]:
        return iter(list(self._by_cidr.values()))

    def get(self, cidr: IPNetwork) -> Claim | None:
        return self._by_cidr.get(cidr)

    def of_node(self, node: str) -> list[Claim]:
        return [self._by_cidr[c] for c in self._by_node.get(node, ())]

    def overlapping(self, cidr: IPNetwork, *, exclude: str | None = None, limit: int = 3) -> list[Claim]:
        out = []
        for _, held in self.index.overlapping(cidr, exclude=exclude, limit=limit):
            claim = self._by_cidr.get(held)
            if claim is not None and claim.node != exclude:
                out.append(claim)
        return out

    def put(self, claim: Claim) -> None:
        """Record ``claim``, replacing whatever was known for its CIDR (set it apart if untrusted)."""
        reason = self.gate(claim) if self.gate is not None else None
        key = claim.lease or str(claim.cidr)
        if reason is not None:
            # The same Lease believed before (its content changed since): it holds nothing now.
            known = self._by_cidr.get(claim.cidr)
            if known is not None and claim.uid and known.uid == claim.uid:
                self.drop(claim.cidr, uid=claim.uid)
            if key in self.untrusted or len(self.untrusted) < self.UNTRUSTED_MAX:
                self.untrusted[key] = Untrusted(claim, reason)
            return
        self.untrusted.pop(key, None)
        before = self._by_cidr.get(claim.cidr)
        if before == claim:
            return
        self.generation += 1
        if before is not None and before.node != claim.node:
            self._unlink(before)
        self._by_cidr[claim.cidr] = claim
        held = self._by_node.setdefault(claim.node, {})
        if claim.cidr not in held:
            held[claim.cidr] = None
            self.index.set(claim.node, held)
        if before is None or before.node != claim.node:
            self._notify(claim.cidr, True)  # (a new holder too: observers that follow holders hear it)

    def drop(self, cidr: IPNetwork, *, uid: str = "", lease: str = "") -> bool:
        """Forget the claim of ``cidr`` (only the Lease ``uid`` when one is given); an untrusted
        one of the Lease ``lease`` (or of that CIDR, in memory) is forgotten too."""
        gone = self.untrusted.get(lease or str(cidr))
        if gone is not None and (not uid or not gone.claim.uid or gone.claim.uid == uid):
            del self.untrusted[lease or str(cidr)]
        claim = self._by_cidr.get(cidr)
        if claim is None or (uid and claim.uid and claim.uid != uid):
            return False
        self.generation += 1
        del self._by_cidr[cidr]
        self._unlink(claim)
        self._notify(cidr, False)
        return True

    def replace_all(self, claims: Iterable[Claim]) -> None:
        """Make the content exactly ``claims`` (a relist)."""
        every = list(claims)
        self.untrusted.clear()
        trusted = [c for c in every if self.gate is None or self.gate(c) is None]
        wanted = {c.cidr: c for c in trusted}
        for cidr in [c for c in self._by_cidr if c not in wanted]:
            self.drop(cidr)
        for claim in every:
            self.put(claim)

    def retrust(self) -> None:
        """Judge every claim again (the cluster-cidr or a mask changed, or time went by)."""
        self.replace_all([*self._by_cidr.values(), *(u.claim for u in self.untrusted.values())])

    def _unlink(self, claim: Claim) -> None:
        held = self._by_node.get(claim.node)
        if held is None:
            return
        held.pop(claim.cidr, None)
        if held:
            self.index.set(claim.node, held)
        else:
            del self._by_node[claim.node]
            self.index.remove(claim.node)

    def _notify(self, cidr: IPNetwork, held: bool) -> None:
        for observer in self._observers:
            observer(cidr, held)


def conflicts(node: str, wanted: Sequence[IPNetwork], book: ClaimBook,
              stored: NodeCidrIndex) -> list[ClaimConflict]:
    """What stands in the way of ``node`` holding ``wanted``: other nodes' claims and podCIDRs."""
    out: list[ClaimConflict] = []
    for cidr in wanted:
        for claim in book.overlapping(cidr, exclude=node, limit=2):
            out.append(ClaimConflict(cidr, claim.node, claim.cidr, claim.since))
        for other, held in stored.overlapping(cidr, exclude=node, limit=2):
            out.append(ClaimConflict(cidr, other, held, None))
    return out


def to_write(node: str, wanted: Sequence[IPNetwork], book: ClaimBook, now: float,
             fresh: float) -> list[IPNetwork]:
    """The CIDRs of ``wanted`` not already claimed by ``node`` within the last ``fresh`` seconds.

    A fresh claim of the node's own (the mutating webhook's, a moment ago) needs no write:
    nothing deletes a claim that young but the node's own deletion, and the release of a
    deleted node's claims is conditional on the Lease's version (:mod:`webhook.kube.leases`).
    """
    out = []
    for cidr in wanted:
        claim = book.get(cidr)
        if claim is None or claim.node != node or now - claim.since > fresh:
            out.append(cidr)
    return out


def suggest_free(cluster_cidr: Sequence[IPNetwork] | None, mask_for: Callable[[int], int],
                 *taken: NodeCidrIndex, families: Iterable[int] | None = None) -> list[IPNetwork]:
    """One free CIDR per cluster-cidr family (only ``families`` when given), in none of ``taken``
    (the stored Nodes' index, the claims' index, subnets already suggested to others)."""
    out = []
    only = set(families) if families is not None else None
    for net in cluster_cidr or ():
        if only is not None and net.version not in only:
            continue
        free = first_free_in(net, mask_for(net.version), taken)
        if free is not None:
            out.append(free)
    return out


def _when(since: float | None) -> str:
    if since is None:
        return "stored on that Node"
    with contextlib.suppress(OverflowError, OSError, ValueError):
        return "claimed since " + datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return "claimed"


def conflict_message(node: str, found: Sequence[ClaimConflict], suggestion: Sequence[IPNetwork]) -> str:
    """One sentence per conflict, then the fix: a free CIDR of each family, or leave it to the allocator."""
    parts = [f"podCIDR {c.wanted} for node {node} is taken: {c.held} is held by node {c.holder[:253]}"
             f" ({_when(c.since)})" for c in found[:4]]
    text = "; ".join(parts) + "."
    if suggestion:
        values = [str(c) for c in suggestion]
        body = json.dumps({"spec": {"podCIDR": values[0], "podCIDRs": values}}, separators=(",", ":"))
        text += (f" Fix: leave podCIDR empty and let it be allocated, or use a free one:"
                 f" `kubectl patch node {node[:253]} -p '{body}'`.")
    else:
        text += " Fix: leave podCIDR empty and let it be allocated (no free CIDR is known right now)."
    return text


@dataclass(frozen=True, slots=True)
class ClaimOutcome:
    """How a write's claims went.

    ``status``: ``claimed`` (written now), ``known`` (the node's own fresh claims, no
    write), ``dry-run`` (checked, nothing written), ``conflict`` (held by another),
    ``unavailable`` (the claim could not be written: ``error`` says why), ``capped`` (judged
    without claiming: the cap on claims for nodes not stored yet is reached; ``error`` says so).
    """

    status: str
    conflicts: tuple[ClaimConflict, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("claimed", "known", "dry-run")

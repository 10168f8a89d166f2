"""The claims a replica believes, and how many may wait for a Node: the shell around the pure policy.

:class:`ClaimGate` is the :class:`~webhook.core.claims.ClaimBook`'s gate: each claim is
judged by :func:`webhook.core.claimpolicy.distrust` against the current cluster-cidr
and masks, and a refused one is logged once (per Lease, version and reason) and counted.
:class:`PendingClaims` answers the allocator and the claimer: is a node stored, how many
claims wait for their Node (kept by following the book and the index, one claim or one
node per change: a claimed write never walks the book), and may a new claim for a node be
made under the cap (:func:`~webhook.core.claimpolicy.pending_cap`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence

import structlog

from webhook.core.cidr import IPNetwork
from webhook.core.claimpolicy import ClaimPolicy, distrust, exempt, pending, pending_cap
from webhook.core.claims import Claim, ClaimBook
from webhook.core.nodeindex import NodeCidrIndex

__all__ = ["ClaimGate", "PendingClaims"]

log = structlog.get_logger("flannel_guard.claims")


class ClaimGate:
    """``gate(claim)``: why ``claim`` is not believed under ``policy()``, or None; logs each once."""

    LOGGED_MAX = 4096

    def __init__(self, policy: Callable[[], ClaimPolicy], clock: Callable[[], float] = time.time) -> None:
        self._policy = policy
        self._clock = clock
        self._logged: dict[tuple[str, str, str], None] = {}

    def __call__(self, claim: Claim) -> str | None:
        reason = distrust(claim.cidr, claim.lease, (claim.since, claim.acquired), self._policy(),
                          self._clock())
        if reason is not None:
            key = (claim.lease or str(claim.cidr), claim.version, reason)
            if key not in self._logged:
                if len(self._logged) >= self.LOGGED_MAX:
                    self._logged.clear()
                self._logged[key] = None
                log.warning("claim not trusted: ignored", lease=(claim.lease or "(memory)")[:253],
                            cidr=str(claim.cidr), holder=claim.node[:253], reason=reason,
                            why=ClaimPolicy.explain(reason))
        return reason


class PendingClaims:
    """Claims waiting for their Node, and the cap on them (issue 28).

    ``unassigned()``: the stored Nodes without a podCIDR (with the index, "stored").
    """

    def __init__(self, book: ClaimBook, index: NodeCidrIndex, policy: Callable[[], ClaimPolicy],
                 unassigned: Callable[[], Collection[str]] = frozenset,
                 clock: Callable[[], float] = time.time) -> None:
        self.book = book
        self._index = index
        self._policy = policy
        self._unassigned = unassigned
        self._clock = clock
        # The pending claims (CIDR -> holder) and how many each holder has.
        self._waiting: dict[IPNetwork, str] = {}
        self._per_node: Counter[str] = Counter()
        self._per_family: Counter[int] = Counter()
        #: New claims withheld at the cap (a counter for /metrics), and when last.
        self.refused = 0
        self.last_refused: float | None = None
        self._full = 4  # the family whose cap was reached last
        book.subscribe(lambda cidr, _held: self._judge(cidr))
        index.subscribe(lambda node, _removed, _added: self._judge_node(node))
        for claim in book:
            self._judge(claim.cidr)

    def _judge(self, cidr: IPNetwork) -> None:
        claim = self.book.get(cidr)
        was = self._waiting.pop(cidr, None)
        if was is not None:
            self._per_node[was] -= 1
            if self._per_node[was] <= 0:
                del self._per_node[was]
            self._per_family[cidr.version] -= 1
        if claim is not None and pending(cidr, claim.node, self._index.cidrs_of):
            self._waiting[cidr] = claim.node
            self._per_node[claim.node] += 1
            self._per_family[cidr.version] += 1

    def _judge_node(self, node: str) -> None:
        for claim in self.book.of_node(node):
            self._judge(claim.cidr)

    def policy(self) -> ClaimPolicy:
        return self._policy()

    def stored(self, node: str) -> bool:
        """Whether ``node`` is a stored Node (with podCIDRs in the index, or without any)."""
        return node in self._index or node in self._unassigned()

    def claims(self) -> list[Claim]:
        """The believed claims whose holder does not hold that CIDR in the node index."""
        return [c for cidr in list(self._waiting) if (c := self.book.get(cidr)) is not None]

    def count(self, version: int | None = None) -> int:
        """Pending claims (of the IP family ``version``, None: all)."""
        return len(self._waiting) if version is None else self._per_family.get(version, 0)

    def cap(self, version: int | None = None) -> int:
        """The cap of the family ``version`` (None: of the smallest family's pool)."""
        return pending_cap(self._policy(), version)

    def admits(self, node: str, versions: Sequence[int]) -> bool:
        """Whether new claims for ``node``, one per entry of ``versions`` (IP families), fit under
        each family's cap (or ``node`` is exempt)."""
        wanted = Counter(versions)
        full = [v for v, n in sorted(wanted.items()) if self.count(v) + n > self.cap(v)]
        if not full:
            return True
        if exempt(node, node in self._unassigned(), self._per_node.get(node, 0)):
            return True
        self.refused += 1
        self.last_refused = self._clock()
        self._full = full[0]
        return False

    def describe(self) -> str:
        """The cap that was reached last, in words, for a warning."""
        v = self._full
        return f"{self.count(v)} IPv{v} claim(s) already wait for Nodes not stored yet, at most {self.cap(v)}"

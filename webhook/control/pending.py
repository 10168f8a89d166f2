"""The claims a replica believes, and how many may wait for a Node: the shell around the pure policy.

:class:`ClaimGate` is the :class:`~webhook.core.claims.ClaimBook`'s gate: each claim is
judged by :func:`webhook.core.claimpolicy.distrust` against the current cluster-cidr
and masks, and a refused one is logged once (per Lease, version and reason) and counted.
:class:`PendingClaims` answers the allocator and the claimer: is a node stored, how many
claims wait for their Node (memoised on the book's and the index's generations), and
may a new claim for a node be made under the cap (:func:`~webhook.core.claimpolicy.pending_cap`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection

import structlog

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
        self._memo: tuple[tuple[int, int], list[Claim]] | None = None
        #: New claims withheld at the cap (a counter for /metrics), and when last.
        self.refused = 0
        self.last_refused: float | None = None

    def policy(self) -> ClaimPolicy:
        return self._policy()

    def stored(self, node: str) -> bool:
        """Whether ``node`` is a stored Node (with podCIDRs in the index, or without any)."""
        return node in self._index or node in self._unassigned()

    def claims(self) -> list[Claim]:
        """The believed claims whose holder does not hold that CIDR in the node index."""
        key = (self.book.generation, self._index.generation)
        if self._memo is None or self._memo[0] != key:
            self._memo = (key, [c for c in self.book if pending(c.cidr, c.node, self._index.cidrs_of)])
        return self._memo[1]

    def count(self) -> int:
        return len(self.claims())

    def cap(self) -> int:
        return pending_cap(self._policy())

    def by_holder(self) -> Counter[str]:
        return Counter(c.node for c in self.claims())

    def admits(self, node: str, new: int) -> bool:
        """Whether ``new`` more claims for ``node`` fit under the cap (or ``node`` is exempt)."""
        if new <= 0:
            return True
        if self.count() + new <= self.cap():
            return True
        mine = sum(1 for c in self.claims() if c.node == node)
        if exempt(node, node in self._unassigned(), mine):
            return True
        self.refused += 1
        self.last_refused = self._clock()
        return False

    def describe(self) -> str:
        """The cap in words, for a warning."""
        return f"{self.count()} claim(s) already wait for Nodes not stored yet, at most {self.cap()}"

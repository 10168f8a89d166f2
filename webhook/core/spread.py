"""Where a replica looks for a free node block: apart from the other replicas (issue 26).

Pure. kube-controller-manager walks its range next-fit from one pointer; so did every
flannel-guard replica, from the same place, so that under a join storm two replicas tried
the same blocks at the same moment and one of them lost each race (one more Lease round trip,
and chains of them in the tail). Two rules keep replicas apart, measured in
``make bench-storm`` (bench/RESULTS.md):

* :func:`start_index`: a replica's pointer starts at an offset derived from its identity
  (the pod's name and a random suffix), so replicas begin in different regions of the range;
* :func:`jump_index`: a replica that loses a race has met another's front; it moves its
  pointer to the middle of the largest free run it knows of, the place farthest from every
  front, instead of trying the next block (which the other replica is about to take).

Neither rule is a lock: the Lease create still decides every race, and a lost race still
just tries another block. They only make races rare.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence

__all__ = ["Walks", "jump_index", "start_index"]


def start_index(identity: str, capacity: int) -> int:
    """The candidate index a replica named ``identity`` starts its next-fit walk at.

    0 for an empty identity (kube-controller-manager's own start); otherwise spread
    uniformly over ``0 .. capacity - 1`` by a hash of the identity.
    """
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, not {capacity}")
    if not identity:
        return 0
    digest = hashlib.sha256(identity.encode()).digest()
    return int.from_bytes(digest[:8], "big") % capacity


def jump_index(occupied: Sequence[tuple[int, int]], capacity: int) -> int | None:
    """The middle of the largest run of free indices, or None when every index is occupied.

    ``occupied``: the occupied indices as sorted, disjoint ``(first, last)`` runs (inclusive).
    The range wraps around (next-fit does): a free run at the end and one at the start are
    one run. Of runs of equal length, the first wins, so the answer is deterministic.
    """
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, not {capacity}")
    if not occupied:
        return capacity // 2
    best_len, best_start = 0, 0
    for (_, last), (first, _) in itertools.pairwise(occupied):
        if first - last - 1 > best_len:
            best_len, best_start = first - last - 1, last + 1
    # The run that wraps: after the last occupied run, then before the first.
    wrap = capacity - 1 - occupied[-1][1] + occupied[0][0]
    if wrap > best_len:
        best_len, best_start = wrap, occupied[-1][1] + 1
    if best_len <= 0:
        return None
    return (best_start + best_len // 2) % capacity


class Walks:
    """Where this replica's two walks of each IP family's blocks stand (issue 26).

    The replica that leads (or that knows of no other) walks in kube-controller-manager's
    order, from block 0; a replica that follows another walks its own region, from
    :func:`start_index`. Each walk keeps its place while the other is in use, so that a
    replica that takes over the lead goes on where the leading walk stopped.
    """

    def __init__(self, identity: str) -> None:
        self._identity = identity
        self._own: dict[int, bool] = {}  # family -> walking its own region now
        self._saved: dict[tuple[int, bool], int] = {}

    def switch(self, family: int, capacity: int, pointer: int, own: bool) -> int | None:
        """The index to point the family's set at, when its walk changes to ``own`` (or back),
        given the set's ``pointer`` now; None when the walk stays the same."""
        own = own and bool(self._identity)
        current = self._own.get(family, False)
        if own == current:
            return None
        self._saved[(family, current)] = pointer
        self._own[family] = own
        return self._saved.get((family, own), start_index(self._identity, capacity) if own else 0)

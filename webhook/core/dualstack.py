"""One node CIDR per cluster-cidr family: kube-controller-manager's dual-stack allocation.

``pkg/controller/nodeipam/ipam/range_allocator.go`` keeps one cidrset per cluster-cidr and
gives a node one CIDR from each, in the cluster-cidr's order (it decides ``podCIDRs[0]``),
all or nothing. Pure: the sets are :class:`webhook.core.cidrset.CidrSet`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from webhook.core.cidr import IPNetwork
from webhook.core.cidrset import (
    DEFAULT_NODE_MASK_V4,
    DEFAULT_NODE_MASK_V6,
    CidrSet,
    IsTaken,
    OutOfRangeError,
    _check_network,
)
from webhook.core.nodeindex import NodeCidrIndex

__all__ = ["DualStackAllocator"]


class DualStackAllocator:
    """One :class:`CidrSet` per cluster-cidr; a node gets one CIDR from each, in cluster-cidr order."""

    def __init__(
        self,
        cluster_cidrs: Sequence[IPNetwork],
        *,
        mask_v4: int = DEFAULT_NODE_MASK_V4,
        mask_v6: int = DEFAULT_NODE_MASK_V6,
    ) -> None:
        nets = tuple(_check_network(n, "cluster-cidr") for n in cluster_cidrs)
        if not 1 <= len(nets) <= 2:
            raise ValueError(f"expected one or two cluster-cidrs, got {len(nets)}")
        if len(nets) == 2 and nets[0].version == nets[1].version:
            raise ValueError("two cluster-cidrs must be one IPv4 and one IPv6")
        # One set per cluster-cidr, in the cluster-cidr's order (it decides podCIDRs[0]).
        self._sets: tuple[CidrSet, ...] = tuple(
            CidrSet(n, mask_v4 if n.version == 4 else mask_v6) for n in nets
        )

    @classmethod
    def from_index(
        cls,
        cluster_cidrs: Sequence[IPNetwork],
        index: NodeCidrIndex,
        *,
        mask_v4: int = DEFAULT_NODE_MASK_V4,
        mask_v6: int = DEFAULT_NODE_MASK_V6,
    ) -> DualStackAllocator:
        """An allocator with every node CIDR in ``index`` occupied (those outside are ignored)."""
        allocator = cls(cluster_cidrs, mask_v4=mask_v4, mask_v6=mask_v6)
        allocator.seed(index)
        return allocator

    @property
    def sets(self) -> tuple[CidrSet, ...]:
        """The per-family sets, in cluster-cidr order."""
        return self._sets

    @property
    def full(self) -> bool:
        """Whether some family has no candidate left (so no node can be served)."""
        return any(s.full for s in self._sets)

    def set_for(self, network: IPNetwork) -> CidrSet | None:
        """The set of ``network``'s family, or None when that family is not configured."""
        for s in self._sets:
            if s.cluster.version == network.version:
                return s
        return None

    def seed(self, index: NodeCidrIndex) -> list[tuple[str, IPNetwork]]:
        """Occupy every node CIDR of ``index``; return the ``(node, cidr)`` pairs outside every range."""
        skipped: list[tuple[str, IPNetwork]] = []
        for node, cidrs in index.nodes():
            skipped.extend((node, c) for c in self.occupy(cidrs))
        return skipped

    def occupy(self, cidrs: Iterable[IPNetwork]) -> list[IPNetwork]:
        """Occupy each CIDR in the set of its family; return those that fit no range (ignored)."""
        ignored: list[IPNetwork] = []
        for cidr in cidrs:
            s = self.set_for(_check_network(cidr, "cidr"))
            if s is None:
                ignored.append(cidr)
                continue
            try:
                s.occupy(cidr)
            except OutOfRangeError:
                ignored.append(cidr)
        return ignored

    def release(self, cidrs: Iterable[IPNetwork]) -> None:
        """Free each CIDR in the set of its family; CIDRs outside every range are ignored."""
        for cidr in cidrs:
            s = self.set_for(_check_network(cidr, "cidr"))
            if s is None:
                continue
            try:
                s.release(cidr)
            except OutOfRangeError:
                continue

    def allocate(self, is_taken: IsTaken | None = None) -> tuple[IPNetwork, ...]:
        """One CIDR per cluster-cidr, in its order; all or nothing.

        Raises :class:`RangeExhaustedError` from the first exhausted family,
        after releasing what the earlier families gave and restoring their
        pointers, so a failed call leaves the allocator as it was.
        """
        taken: list[tuple[CidrSet, IPNetwork, int]] = []
        try:
            for s in self._sets:
                pointer = s.next_candidate
                taken.append((s, s.allocate_next(is_taken), pointer))
        except BaseException:
            for s, network, pointer in reversed(taken):
                s.release(network)
                s._next_candidate = pointer
            raise
        return tuple(network for _, network, _ in taken)

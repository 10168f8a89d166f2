"""Pure node podCIDR allocation with kube-controller-manager's range-allocator semantics.

Nothing here does I/O. The behaviour is restated (not translated) from
kubernetes/kubernetes:

* ``pkg/controller/nodeipam/ipam/cidrset/cidr_set.go`` — one cluster-cidr cut
  into ``2**(mask - prefix)`` candidate CIDRs, numbered from the start of the
  range; next-fit allocation from a candidate pointer that wraps around;
  ``Occupy`` / ``Release`` of any CIDR that overlaps the range (every candidate
  it touches, the whole range for a CIDR at least as large as the cluster-cidr;
  an error for a CIDR outside it); a counter that makes "full" O(1);
  occupy/release idempotent; at most 16 bits between an IPv6 cluster prefix
  and the node mask (``clusterSubnetMaxDiff``), no such limit for IPv4.
* ``pkg/controller/nodeipam/node_ipam_controller.go`` — the cluster-cidr's
  prefix must be less than or equal to the node mask size (equal is allowed:
  one candidate).
* ``pkg/controller/nodeipam/ipam/range_allocator.go`` — one set per
  cluster-cidr (dual-stack), one CIDR from each set for a node, in the order
  the cluster-cidr lists them.
* ``cmd/kube-controller-manager/app/core.go`` — ``--node-cidr-mask-size-ipv4``
  defaults to 24, ``--node-cidr-mask-size-ipv6`` to 64.

Where this differs from upstream, on purpose:

* Occupancy is kept as sorted runs of occupied candidate indices
  (:class:`~webhook.core.indexruns.IndexRuns`), not a bitmap with one bit per
  candidate, and next-fit jumps over a whole run at once: the same answers, but
  a nearly full range costs O(log runs), not O(candidates).
* :meth:`CidrSet.allocate_next` takes an ``is_taken`` callback: a candidate it
  rejects (a CIDR reserved by another webhook replica) is skipped without
  being marked occupied.
* Existing node CIDRs are matched to a set by family, not by position in
  ``spec.podCIDRs``, and one outside every range is skipped and reported: at
  start-up upstream's ``NewCIDRRangeAllocator`` fails on it ("This error will
  keep crashing controller-manager"), for a node seen later the informer
  handler logs the error and goes on. An admission webhook must not crash.
* :class:`DualStackAllocator` is all-or-nothing: when the second family is
  exhausted the first family's CIDR is released and its pointer restored
  (upstream's ``AllocateOrOccupyCIDR`` returns the error and keeps the first).

Exceptions::

    CidrSetError
    ├── InvalidMaskError      (also ValueError)
    ├── MaskTooSmallError     (also ValueError)
    ├── MaskTooBigError       (also ValueError)
    ├── OutOfRangeError       (also ValueError)
    └── RangeExhaustedError

Not thread-safe: callers serialise access (upstream holds a mutex per set).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator

from webhook.core.cidr import IPNetwork, last_address
from webhook.core.indexruns import IndexRuns

__all__ = [
    "DEFAULT_NODE_MASK_V4",
    "DEFAULT_NODE_MASK_V6",
    "MAX_IPV6_MASK_DIFF",
    "CidrSet",
    "CidrSetError",
    "InvalidMaskError",
    "MaskTooBigError",
    "MaskTooSmallError",
    "OutOfRangeError",
    "RangeExhaustedError",
]

DEFAULT_NODE_MASK_V4 = 24
"""kube-controller-manager's default ``--node-cidr-mask-size-ipv4``."""
DEFAULT_NODE_MASK_V6 = 64
"""kube-controller-manager's default ``--node-cidr-mask-size-ipv6``."""
MAX_IPV6_MASK_DIFF = 16
"""Upstream ``clusterSubnetMaxDiff``: an IPv6 node mask at most this many bits longer than the range."""

IsTaken = Callable[[IPNetwork], bool]


class CidrSetError(Exception):
    """Base class of every error raised by this module."""


class InvalidMaskError(CidrSetError, ValueError):
    """Raised when a node mask size is not an integer between 0 and the family's address length."""


class MaskTooSmallError(CidrSetError, ValueError):
    """Raised when the node mask size is shorter than the cluster-cidr's prefix length."""


class MaskTooBigError(CidrSetError, ValueError):
    """Raised when an IPv6 node mask exceeds the cluster prefix by over 16 bits (ErrCIDRSetSubNetTooBig)."""


class OutOfRangeError(CidrSetError, ValueError):
    """Raised when a CIDR given to occupy, release or index_of does not overlap the set's range."""


class RangeExhaustedError(CidrSetError):
    """Raised when no candidate CIDR is left to allocate (upstream ErrCIDRRangeNoCIDRsRemaining)."""

    def __init__(self, message: str, *, cluster: IPNetwork, mask: int, capacity: int, used: int) -> None:
        super().__init__(message)
        self.cluster = cluster
        self.mask = mask
        self.capacity = capacity
        self.used = used


def _check_network(value: object, what: str) -> IPNetwork:
    if not isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        raise TypeError(f"{what} must be an IPv4Network or IPv6Network, not {type(value).__name__}")
    return value


def _family(network: IPNetwork) -> str:
    return "IPv4" if network.version == 4 else "IPv6"


class CidrSet:
    """The candidate node CIDRs of one cluster-cidr, and which of them are in use.

    Candidate ``i`` is the ``i``-th CIDR of length ``mask`` counted from the
    start of ``cluster``. Occupied candidates are stored as maximal runs
    ``first -> last`` (inclusive, never adjacent), so memory grows with the
    number of runs, not with the size of the range.
    """

    def __init__(self, cluster: IPNetwork, mask: int) -> None:
        cluster = _check_network(cluster, "cluster")
        if isinstance(mask, bool) or not isinstance(mask, int):
            raise InvalidMaskError(f"node mask size must be an integer, not {type(mask).__name__}")
        bits = cluster.max_prefixlen
        if not 0 <= mask <= bits:
            raise InvalidMaskError(
                f"node mask size /{mask} is not between /0 and /{bits} for {_family(cluster)}"
            )
        if mask < cluster.prefixlen:
            raise MaskTooSmallError(
                f"node mask size /{mask} is shorter than the cluster-cidr {cluster}: the mask size of the"
                " cluster-cidr must be less than or equal to the node CIDR mask size"
            )
        if cluster.version == 6 and mask - cluster.prefixlen > MAX_IPV6_MASK_DIFF:
            longest = cluster.prefixlen + MAX_IPV6_MASK_DIFF
            raise MaskTooBigError(
                f"node mask size /{mask} is {mask - cluster.prefixlen} bits longer than the IPv6 cluster-cidr"
                f" {cluster}; at most {MAX_IPV6_MASK_DIFF} are allowed (use /{longest} or shorter,"
                f" or a cluster-cidr of /{mask - MAX_IPV6_MASK_DIFF} or larger)"
            )
        # The range the candidates are cut from.
        self._cluster: IPNetwork = cluster
        # Node mask size in bits (the length of every candidate).
        self._mask = mask
        # IPv4Network or IPv6Network, to build candidates of the right family.
        self._network_type: type[IPNetwork] = type(cluster)
        # First address of the range, as an integer.
        self._base = int(cluster.network_address)
        # The cluster-cidr's last address.
        self._last = last_address(cluster)
        # log2 of the number of addresses in one candidate.
        self._shift = bits - mask
        # Number of candidates (upstream maxCIDRs).
        self._capacity = 1 << (mask - cluster.prefixlen)
        # Index where the next allocation starts looking (upstream nextCandidate).
        self._next_candidate = 0
        # Occupied candidates as maximal runs; its count (upstream allocatedCIDRs) makes `full` O(1).
        self._occupied = IndexRuns()
        # Candidates examined by the last allocate_next (a run of occupied ones counts once).
        self._inspected = 0

    def __repr__(self) -> str:
        return f"CidrSet({self._cluster}, mask={self._mask}, used={self._occupied.count}/{self._capacity})"

    # --- read-only state ------------------------------------------------------

    @property
    def cluster(self) -> IPNetwork:
        """The range candidates are cut from."""
        return self._cluster

    @property
    def mask(self) -> int:
        """The node CIDR mask size."""
        return self._mask

    @property
    def capacity(self) -> int:
        """How many node CIDRs the range holds."""
        return self._capacity

    @property
    def used(self) -> int:
        """How many candidates are occupied (O(1))."""
        return self._occupied.count

    @property
    def free(self) -> int:
        """How many candidates are not occupied."""
        return self._capacity - self._occupied.count

    @property
    def full(self) -> bool:
        """Whether every candidate is occupied (O(1))."""
        return self._occupied.count == self._capacity

    @property
    def next_candidate(self) -> int:
        """Index where the next allocation starts looking."""
        return self._next_candidate

    @property
    def inspected(self) -> int:
        """Candidates examined by the last :meth:`allocate_next`; a run of occupied ones counts as one."""
        return self._inspected

    def occupied_index_ranges(self) -> tuple[tuple[int, int], ...]:
        """Occupied candidate indices as maximal ``(first, last)`` runs, in order."""
        return self._occupied.ranges()

    # --- index <-> CIDR -------------------------------------------------------

    def cidr_at(self, index: int) -> IPNetwork:
        """Candidate number ``index`` (upstream indexToCIDRBlock)."""
        if not 0 <= index < self._capacity:
            raise IndexError(f"candidate index {index} is not in 0..{self._capacity - 1}")
        # The family's own class: ip_network() would read a small integer as IPv4.
        return self._network_type((self._base + (index << self._shift), self._mask))

    def index_of(self, network: IPNetwork) -> int:
        """Index of the candidate that holds ``network``'s first address (upstream getIndexForCIDR)."""
        network = _check_network(network, "network")
        if network.version != self._cluster.version or network.network_address not in self._cluster:
            raise OutOfRangeError(f"{network} is out of the range of cluster-cidr {self._cluster}")
        return (int(network.network_address) - self._base) >> self._shift

    # --- occupancy ------------------------------------------------------------

    def occupy(self, network: IPNetwork) -> int:
        """Mark every candidate that ``network`` touches as occupied; return how many were newly marked.

        Idempotent. A network at least as large as the range occupies all of it.
        Raises :class:`OutOfRangeError` when ``network`` does not overlap the range.
        """
        first, last = self._bounds_or_raise(network)
        return self._occupied.add(first, last)

    def release(self, network: IPNetwork) -> int:
        """Free every candidate that ``network`` touches; return how many were newly freed.

        Idempotent; does not move the allocation pointer.
        Raises :class:`OutOfRangeError` when ``network`` does not overlap the range.
        """
        first, last = self._bounds_or_raise(network)
        return self._occupied.remove(first, last)

    def is_occupied(self, network: IPNetwork) -> bool:
        """Whether any candidate that ``network`` touches is occupied (False when it is outside the range)."""
        bounds = self._bounds(_check_network(network, "network"))
        if bounds is None:
            return False
        return self._occupied.any_in(*bounds)

    # --- allocation -----------------------------------------------------------

    def candidates(self) -> Iterator[IPNetwork]:
        """Free candidates in the order :meth:`allocate_next` tries them, changing nothing.

        Next-fit: from the pointer to the end of the range, then from its start
        back to the pointer; each at most once. The occupancy is re-read before
        every step, so candidates occupied meanwhile are skipped. For callers
        that reserve asynchronously: try each, then :meth:`take` the one won.
        """
        for index in self._walk():
            yield self.cidr_at(index)

    def take(self, network: IPNetwork) -> None:
        """Occupy a candidate as :meth:`allocate_next` would: mark it and move the pointer past it."""
        network = _check_network(network, "network")
        if network.prefixlen != self._mask:
            raise OutOfRangeError(f"{network} is not a /{self._mask} candidate of {self._cluster}")
        index = self.index_of(network)
        self._occupied.add(index, index)
        self._next_candidate = (index + 1) % self._capacity

    def rewind(self, network: IPNetwork) -> None:
        """Point the next-fit search at ``network`` again (a claim of it failed halfway).

        Occupied candidates are still skipped; only the order of the search changes.
        """
        self._next_candidate = self.index_of(_check_network(network, "network"))

    def allocate_next(self, is_taken: IsTaken | None = None) -> IPNetwork:
        """Occupy and return the next free candidate, next-fit from the pointer.

        A candidate for which ``is_taken`` returns True is skipped and left
        unoccupied (the caller may occupy it). ``is_taken`` must not modify this
        set. Raises :class:`RangeExhaustedError` when no candidate is left.
        """
        self._inspected = 0
        if self.full:
            raise self._exhausted(rejected=0)
        rejected = 0
        for index in self._walk():
            network = self.cidr_at(index)
            if is_taken is not None and is_taken(network):
                rejected += 1
                continue
            self._occupied.add(index, index)
            self._next_candidate = (index + 1) % self._capacity
            return network
        raise self._exhausted(rejected=rejected)

    # --- internals ------------------------------------------------------------

    def exhausted_error(self) -> RangeExhaustedError:
        """The error :meth:`allocate_next` raises when no candidate is left (for callers that walk)."""
        return self._exhausted(rejected=0)

    def _exhausted(self, *, rejected: int) -> RangeExhaustedError:
        if rejected:
            state = f"{self._occupied.count} in use and the other {rejected} reserved elsewhere"
        else:
            state = "all in use"
        diff = self._mask - self._cluster.prefixlen
        if self._mask == self._cluster.max_prefixlen or (
            self._cluster.version == 6 and diff >= MAX_IPV6_MASK_DIFF
        ):
            fix = "use a larger cluster-cidr"
        else:
            fix = (
                "use a larger cluster-cidr, or a different node CIDR mask size (a longer mask than"
                f" /{self._mask} gives more, smaller node CIDRs)"
            )
        return RangeExhaustedError(
            "CIDR allocation failed; there are no remaining CIDRs left to allocate in the accepted range:"
            f" cluster-cidr {self._cluster} holds {self._capacity} node CIDR(s) of /{self._mask}, {state};"
            f" {fix}",
            cluster=self._cluster,
            mask=self._mask,
            capacity=self._capacity,
            used=self._occupied.count,
        )

    def _bounds(self, network: IPNetwork) -> tuple[int, int] | None:
        """First and last candidate index that ``network`` touches, or None when it is outside."""
        cluster = self._cluster
        # Integer bounds, not ``network.overlaps``/``broadcast_address``: those cache a
        # broadcast address on every node's network object (5 MB at 15,000 nodes).
        start, end = int(network.network_address), last_address(network)
        if network.version != cluster.version or end < self._base or start > self._last:
            return None
        if network.prefixlen <= cluster.prefixlen:
            return 0, self._capacity - 1
        return (start - self._base) >> self._shift, (end - self._base) >> self._shift

    def _bounds_or_raise(self, network: IPNetwork) -> tuple[int, int]:
        bounds = self._bounds(_check_network(network, "network"))
        if bounds is None:
            raise OutOfRangeError(f"cidr {network} is out of the range of cluster-cidr {self._cluster}")
        return bounds

    def _first_free(self, pos: int) -> int | None:
        """The first free index at or after ``pos``, or None; counts what it examines."""
        last = self._occupied.run_end(pos)
        if last is not None:
            # A whole run of occupied candidates, examined at once.
            self._inspected += 1
            pos = last + 1
            if pos >= self._capacity:
                return None
        # Runs are maximal, so the index right after one is free.
        self._inspected += 1
        return pos

    def _walk(self) -> Iterator[int]:
        """Free indices from the pointer to the end, then from 0 up to the pointer; each once."""
        start = self._next_candidate
        pos = start
        wrapped = False
        while True:
            found = self._first_free(pos) if pos < self._capacity else None
            if wrapped and (found is None or found >= start):
                return
            if found is None:
                if start == 0:
                    return
                wrapped, pos = True, 0
                continue
            yield found
            pos = found + 1

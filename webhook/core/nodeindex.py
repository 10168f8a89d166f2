"""Which node owns which pod CIDR: an index answering overlap queries in O(P log n). Pure, no I/O.

Kept per node: its name and networks, never whole Node objects. Also the first
free subnet of a range across several indexes (the stored nodes and the claims).
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from sortedcontainers import SortedDict

from webhook.core.cidr import IPNetwork, last_address

__all__ = ["NodeCidrIndex", "first_free_in"]


def _owners(value: str | set[str]) -> list[str]:
    """The owners of one start, sorted."""
    return [value] if isinstance(value, str) else sorted(value)


def _make(version: int, start: int, prefixlen: int) -> IPNetwork:
    """A network from its integer start; ``ip_network((int, n))`` would read a small int as IPv4."""
    if version == 4:
        return ipaddress.IPv4Network((start, prefixlen))
    return ipaddress.IPv6Network((start, prefixlen))


@dataclass
class _Bucket:
    """All indexed CIDRs of one family and one prefix length, sorted by address."""

    # start -> its owner's name, or a set of names when several nodes share the CIDR (rare).
    by_start: SortedDict = field(default_factory=SortedDict)
    # Owners over all starts, and the starts that have more than one (a shared CIDR, rare):
    # with them, counting the owners of a range of starts takes two bisections.
    owners: int = 0
    shared: dict[int, int] = field(default_factory=dict)

    def recount(self, start: int, before: int, after: int) -> None:
        """Account for the owners of ``start`` going from ``before`` to ``after``."""
        self.owners += after - before
        if after > 1:
            self.shared[start] = after
        else:
            self.shared.pop(start, None)

    def owners_between(self, lo: int, hi: int) -> int:
        """Owners of the starts in ``[lo, hi]``, in O(log n + shared starts)."""
        if lo > hi:
            return 0
        n = self.by_start.bisect_right(hi) - self.by_start.bisect_left(lo)
        return n + sum(c - 1 for s, c in self.shared.items() if lo <= s <= hi)


_Outside = tuple[int, list[tuple[str, IPNetwork]]]  # (count, the first few (node, cidr))


class NodeCidrIndex:
    """Which node owns which pod CIDR, answering overlap queries in O(P log n).

    P is the number of distinct prefix lengths in use (one or two in a real
    cluster: every node gets ``--node-cidr-mask-size``), n the number of CIDRs.
    Per node only its name and CIDRs are kept, never whole Node objects.

    Two CIDRs overlap exactly when one contains the other, so a query for ``q``
    looks up, for each prefix length ``p`` in use, either the one supernet of
    ``q`` of length ``p`` (``p <= q.prefixlen``), or the range of starts inside
    ``q`` (``p > q.prefixlen``).
    """

    def __init__(self) -> None:
        self._by_node: dict[str, tuple[IPNetwork, ...]] = {}
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self._observers: list[Callable[[str, tuple[IPNetwork, ...], tuple[IPNetwork, ...]], None]] = []
        # Bumped by every change: answers computed from the content are valid while it stands.
        self.generation = 0
        self._outside_memo: dict[tuple[tuple[IPNetwork, ...], int], _Outside] = {}
        self._outside_generation = -1

    def subscribe(
        self, observer: Callable[[str, tuple[IPNetwork, ...], tuple[IPNetwork, ...]], None]
    ) -> None:
        """Call ``observer(node, removed, added)`` after every change (the allocator follows it)."""
        self._observers.append(observer)

    def _notify(self, node: str, removed: tuple[IPNetwork, ...], added: tuple[IPNetwork, ...]) -> None:
        self.generation += 1
        for observer in self._observers:
            observer(node, removed, added)

    def __len__(self) -> int:
        return len(self._by_node)

    def __contains__(self, node: object) -> bool:
        return node in self._by_node

    def nodes(self) -> Iterator[tuple[str, tuple[IPNetwork, ...]]]:
        """Every node with its CIDRs (a snapshot-safe iteration over a copy)."""
        return iter(list(self._by_node.items()))

    def cidrs_of(self, node: str) -> tuple[IPNetwork, ...]:
        return self._by_node.get(node, ())

    def set(self, node: str, cidrs: Iterable[IPNetwork]) -> None:
        """Record ``node``'s CIDRs, replacing what it had (idempotent)."""
        new = tuple(cidrs)
        old = self._by_node.get(node, ())
        if old == new:
            return
        self._drop(node)
        if new:
            self._add(node, new)
        self._notify(node, old, new)

    def _add(self, node: str, new: tuple[IPNetwork, ...]) -> None:
        self._by_node[node] = new
        for net in new:
            key = (net.version, net.prefixlen)
            bucket = self._buckets.get(key)
            if bucket is None:  # not setdefault: that built a _Bucket (a SortedDict) on every write
                bucket = self._buckets[key] = _Bucket()
            start = int(net.network_address)
            owners = bucket.by_start.get(start)
            if owners is None:
                bucket.by_start[start] = node  # one owner: the name itself, not a set (memory)
                bucket.recount(start, 0, 1)
            elif isinstance(owners, str):
                if owners != node:
                    bucket.by_start[start] = {owners, node}
                    bucket.recount(start, 1, 2)
            else:
                before = len(owners)
                owners.add(node)
                bucket.recount(start, before, len(owners))

    def remove(self, node: str) -> None:
        """Forget ``node`` and free its CIDRs (idempotent)."""
        old = self._drop(node)
        if old:
            self._notify(node, old, ())

    def _drop(self, node: str) -> tuple[IPNetwork, ...]:
        old = self._by_node.pop(node, ())
        for net in dict.fromkeys(old):  # a CIDR listed twice was indexed once
            key = (net.version, net.prefixlen)
            bucket = self._buckets[key]
            start = int(net.network_address)
            owners = bucket.by_start[start]
            if isinstance(owners, str):
                if owners == node:
                    del bucket.by_start[start]
                    bucket.recount(start, 1, 0)
            else:
                before = len(owners)
                owners.discard(node)
                bucket.recount(start, before, len(owners))
                if len(owners) == 1:
                    bucket.by_start[start] = next(iter(owners))
            if not bucket.by_start:
                del self._buckets[key]
        return old

    def replace_all(self, entries: Iterable[tuple[str, Iterable[IPNetwork]]]) -> None:
        """Make the content exactly ``entries`` (a relist), changing only what differs."""
        wanted = {node: tuple(cidrs) for node, cidrs in entries}
        for node in [n for n in self._by_node if n not in wanted]:
            self.remove(node)
        for node, cidrs in wanted.items():
            self.set(node, cidrs)

    def overlapping(
        self, query: IPNetwork, *, exclude: str | None = None, limit: int = 5
    ) -> list[tuple[str, IPNetwork]]:
        """Up to ``limit`` (node, cidr) pairs whose CIDR overlaps ``query``."""
        found: list[tuple[str, IPNetwork]] = []
        start = int(query.network_address)
        end = last_address(query)
        bits = query.max_prefixlen
        for (version, plen), bucket in self._buckets.items():
            if version != query.version:
                continue
            if plen <= query.prefixlen:
                # The only candidate is the supernet of query with this prefix length.
                key = start >> (bits - plen) << (bits - plen)
                starts: Iterable[int] = (key,) if key in bucket.by_start else ()
            else:
                starts = bucket.by_start.irange(start, end)
            for s in starts:
                net = None  # built only for an owner that is reported (a review's own CIDR is not)
                for owner in _owners(bucket.by_start[s]):
                    if owner != exclude:
                        if net is None:
                            net = _make(version, s, plen)
                        found.append((owner, net))
                        if len(found) >= limit:
                            return found
        return found

    def outside(
        self, networks: Iterable[IPNetwork], *, limit: int = 5
    ) -> tuple[int, list[tuple[str, IPNetwork]]]:
        """Count CIDRs that lie in none of ``networks`` (per family), with the first ``limit``.

        A family with no network in ``networks`` is not judged. With one network
        per family (flannel's Network / IPv6Network) this costs O(P log n + limit):
        the starts inside are one contiguous range of each bucket, counted by
        bisection; only the sample is walked. Several networks of one family
        (their union) take a scan.

        Every review asks this (the "outside the cluster-cidr" note, a ConfigMap's
        stranding check) with the same networks: the answer is kept until the index changes.
        """
        key = (tuple(networks), limit)
        if self._outside_generation != self.generation:
            self._outside_memo.clear()
            self._outside_generation = self.generation
        hit = self._outside_memo.get(key)
        if hit is None:
            if len(self._outside_memo) >= 8:  # a handful of distinct queries; never grows with callers
                self._outside_memo.clear()
            hit = self._outside_memo[key] = self._outside(key[0], limit)
        return hit[0], list(hit[1])

    def _outside(
        self, networks: tuple[IPNetwork, ...], limit: int
    ) -> tuple[int, list[tuple[str, IPNetwork]]]:
        by_version: dict[int, list[IPNetwork]] = {}
        for n in networks:
            by_version.setdefault(n.version, []).append(n)
        count = 0
        sample: list[tuple[str, IPNetwork]] = []
        for (version, plen), bucket in self._buckets.items():
            nets = by_version.get(version)
            if not nets:
                continue
            bits = 32 if version == 4 else 128
            size = 1 << (bits - plen)
            if len(nets) == 1:
                n = nets[0]
                # Starts s with network_address <= s and s + size - 1 <= broadcast_address.
                lo, hi = (int(n.network_address), last_address(n) - size + 1) \
                    if plen >= n.prefixlen else (1, 0)
                count += bucket.owners - bucket.owners_between(lo, hi)
                if len(sample) < limit:
                    below = bucket.by_start.irange(maximum=lo - 1) if lo <= hi else bucket.by_start.irange()
                    above = bucket.by_start.irange(minimum=hi + 1) if lo <= hi else ()
                    for s in itertools.chain(below, above):
                        for owner in _owners(bucket.by_start[s]):
                            sample.append((owner, _make(version, s, plen)))
                            if len(sample) >= limit:
                                break
                        if len(sample) >= limit:
                            break
                continue
            for s, owners in bucket.by_start.items():
                inside = any(
                    plen >= n.prefixlen
                    and int(n.network_address) <= s
                    and s + size - 1 <= last_address(n)
                    for n in nets
                )
                if not inside:
                    names = _owners(owners)
                    count += len(names)
                    for owner in names:
                        if len(sample) < limit:
                            sample.append((owner, _make(version, s, plen)))
        return count, sample

    def first_free(self, within: IPNetwork, prefixlen: int) -> IPNetwork | None:
        """The lowest subnet of ``within`` of length ``prefixlen`` that overlaps no indexed CIDR.

        Used to suggest a fix in a denial message (:func:`first_free_in` with this index alone).
        """
        return first_free_in(within, prefixlen, (self,))


def first_free_in(within: IPNetwork, prefixlen: int,
                  indexes: Iterable[NodeCidrIndex]) -> IPNetwork | None:
    """The lowest subnet of ``within`` of length ``prefixlen`` overlapping nothing in any of ``indexes``.

    Skips over each occupied range at once, so it costs O(k log n) for k occupied
    ranges in front of the first gap, not one probe per candidate. Several indexes:
    the stored nodes' CIDRs and the claims in flight are kept apart but both occupy.
    """
    if prefixlen < within.prefixlen or prefixlen > within.max_prefixlen:
        return None
    sources = tuple(indexes)
    bits = within.max_prefixlen
    step = 1 << (bits - prefixlen)
    candidate = int(within.network_address)
    last = last_address(within)
    while candidate + step - 1 <= last:
        net = _make(within.version, candidate, prefixlen)
        blocker = next((hit[0][1] for index in sources if (hit := index.overlapping(net, limit=1))), None)
        if blocker is None:
            return net
        past = last_address(blocker) + 1
        # Next aligned candidate at or after the end of the blocking CIDR.
        candidate = max(candidate + step, (past + step - 1) // step * step)
    return None

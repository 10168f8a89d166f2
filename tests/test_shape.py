"""The algorithmic shape of the hot paths, pinned by counting work rather than timing it.

The overlap index answers a query with a fixed number of bucket lookups and
bisections whatever the number of nodes; ``outside`` (the flannel ConfigMap's
stranding check) counts by bisection instead of scanning every node; the
allocator inspects one candidate per allocation on a nearly empty range and
writes one reservation per node; the node list is read in bounded pages.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections import Counter

import pytest
from kube_emulator import FakeKubeApi, client_for
from kube_emulator import node as api_node
from sortedcontainers import SortedDict

from webhook.control.allocator import Allocator, MemoryStore
from webhook.control.state import ClusterState
from webhook.core.cidr import IPNetwork
from webhook.core.cidrset import CidrSet
from webhook.core.claims import Claim
from webhook.core.nodeindex import NodeCidrIndex
from webhook.kube.watch import LIST_PAGE, NodeWatcher

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network


class CountingSortedDict(SortedDict):
    """A SortedDict that counts the lookups and bisections made on it.

    SortedDict binds ``irange`` and the bisections per instance (its keys list's
    methods), so they are wrapped here after construction.
    """

    calls: Counter[str]

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.calls = Counter()
        for name, label in (("irange", "irange"), ("bisect_left", "bisect"), ("bisect_right", "bisect")):
            setattr(self, name, self._counted(getattr(self, name), label))

    def _counted(self, fn, label: str):
        def wrapper(*args, **kwargs):
            self.calls[label] += 1
            return fn(*args, **kwargs)
        return wrapper

    def __contains__(self, key: object) -> bool:
        self.calls["contains"] += 1
        return super().__contains__(key)


def v4_node(i: int) -> V4:
    return V4(f"10.{(i >> 8) & 255}.{i & 255}.0/24")


def v6_node(i: int) -> V6:
    return V6(f"fd00:10:244:{i:x}::/64")


def counted_index(n: int) -> NodeCidrIndex:
    """An index of ``n`` dual-stack nodes whose buckets count what queries do to them."""
    index = NodeCidrIndex()
    for i in range(n):
        index.set(f"node-{i:05d}", [v4_node(i), v6_node(i)])
    for bucket in index._buckets.values():
        bucket.by_start = CountingSortedDict(bucket.by_start)
    return index


def calls(index: NodeCidrIndex) -> Counter[str]:
    total: Counter[str] = Counter()
    for bucket in index._buckets.values():
        total += bucket.by_start.calls
        bucket.by_start.calls.clear()
    return total


QUERIES: list[IPNetwork] = [
    v4_node(3), V4("10.0.3.128/25"), V4("10.0.0.0/16"), V4("10.255.0.0/24"),
    v6_node(3), V6("fd00:10:244:3::/80"), V6("fd00:10:244::/48"), V6("fd00:99::/64"),
]


@pytest.mark.parametrize("query", QUERIES, ids=str)
def test_an_overlap_query_costs_the_same_lookups_at_100_and_15000_nodes(query):
    small, large = counted_index(100), counted_index(15000)
    a = small.overlapping(query, limit=1)
    b = large.overlapping(query, limit=1)
    assert calls(small) == calls(large)
    assert (a == []) == (b == [])


def test_an_identical_query_is_one_lookup_per_bucket_of_its_family():
    index = counted_index(15000)
    assert index.overlapping(v4_node(7000), exclude="node-07000") == []
    assert calls(index) == Counter(contains=1)  # one /24 bucket; the /64 bucket is not consulted
    assert index.overlapping(v6_node(7000)) == [("node-07000", v6_node(7000))]
    assert calls(index) == Counter(contains=1)


def test_a_query_for_a_wider_cidr_is_one_bisection_however_many_it_holds():
    index = counted_index(15000)
    hits = index.overlapping(V4("10.0.0.0/8"), limit=3)
    assert [name for name, _ in hits] == ["node-00000", "node-00001", "node-00002"]
    assert calls(index) == Counter(irange=1)


def brute_outside(entries: dict[str, list[IPNetwork]], networks: list[IPNetwork],
                  limit: int) -> tuple[int, list[tuple[str, IPNetwork]]]:
    """``outside`` restated as a scan over every (node, CIDR), in the index's order."""
    versions = {n.version for n in networks}
    bad = [(c, node) for node, cidrs in entries.items() for c in set(cidrs)
           if c.version in versions and not any(c.version == n.version and c.subnet_of(n)  # type: ignore[arg-type]
                                                for n in networks)]
    return len(bad), bad  # order checked separately below


@pytest.mark.parametrize("seed", range(20))
def test_outside_agrees_with_a_scan_including_shared_cidrs_in_both_families(seed):
    rng = random.Random(seed)
    index = NodeCidrIndex()
    entries: dict[str, list[IPNetwork]] = {}
    for i in range(rng.randrange(1, 80)):
        cidrs: list[IPNetwork] = [V4(f"10.{rng.choice([244, 245])}.{rng.randrange(8)}.0/"
                                      f"{rng.choice([24, 24, 24, 23, 25])}", strict=False)]
        if rng.random() < 0.5:
            cidrs.append(V6(f"fd00:{rng.choice([10, 11])}:244:{rng.randrange(8)}::/64"))
        entries[f"n{i:03d}"] = cidrs
        index.set(f"n{i:03d}", cidrs)
    for _ in range(rng.randrange(10)):  # removals keep the counts right
        gone = rng.choice(sorted(entries))
        index.remove(gone)
        del entries[gone]
    networks: list[IPNetwork] = [V4(rng.choice(["10.244.0.0/16", "10.244.4.0/22", "10.0.0.0/8"]))]
    if rng.random() < 0.5:
        networks.append(V6(rng.choice(["fd00:10::/32", "fd00:10:244::/48"])))
    count, sample = index.outside(networks, limit=5)
    want_count, bad = brute_outside(entries, networks, 5)
    assert count == want_count
    assert len(sample) == min(5, want_count)
    assert {(node, cidr) for node, cidr in sample} <= {(node, cidr) for cidr, node in bad}


def test_outside_counts_by_bisection_not_by_scanning_the_nodes():
    small, large = counted_index(100), counted_index(15000)
    networks = [V4("10.0.0.0/8"), V6("fd00:10:244::/48")]
    assert small.outside(networks) == (0, []) and large.outside(networks) == (0, [])
    assert calls(small) == calls(large) == Counter(bisect=4, irange=4)  # irange: the empty sample


def test_outside_is_kept_until_the_index_changes_and_never_stale():
    index = counted_index(1000)
    networks = [V4("10.0.0.0/16")]  # nodes 256 and up are outside
    first = index.outside(networks, limit=2)
    assert calls(index)
    for _ in range(3):  # every review asks again: no bucket is consulted until a change
        assert index.outside(networks, limit=2) == first
        assert calls(index) == Counter()
    first[1].clear()  # a caller changing its copy changes nothing kept
    assert index.outside(networks, limit=2) == (1000 - 256, [("node-00256", v4_node(256)),
                                                             ("node-00257", v4_node(257))])
    index.remove("node-00256")
    assert index.outside(networks, limit=2) == (1000 - 257, [("node-00257", v4_node(257)),
                                                             ("node-00258", v4_node(258))])
    index.set("node-00256", [v4_node(256)])
    index.set("node-00999", [v4_node(5)])  # now inside the /16 (a shared CIDR)
    assert index.outside(networks, limit=2)[0] == 1000 - 257
    index.set("node-00999", [v4_node(999)])
    assert index.outside(networks, limit=2)[0] == 1000 - 256
    for k in range(20):  # many distinct queries: the memo stays small
        index.outside([V4(f"10.{k}.0.0/16")], limit=1)
    assert len(index._outside_memo) <= 8


def test_outside_names_the_first_nodes_outside_in_address_order():
    index = NodeCidrIndex()
    for i in range(3000):
        index.set(f"node-{i:05d}", [v4_node(i)])
    count, sample = index.outside([V4("10.0.0.0/16")], limit=2)
    assert count == 3000 - 256
    assert sample == [("node-00256", v4_node(256)), ("node-00257", v4_node(257))]


@pytest.mark.parametrize("cluster, mask", [(V4("10.0.0.0/8"), 24), (V6("fd00::/48"), 64)])
def test_every_allocation_on_a_nearly_empty_range_inspects_one_candidate(cluster, mask):
    s = CidrSet(cluster, mask)
    s.occupy(s.cidr_at(1000))  # one node already there, far ahead
    for k in range(1000):
        assert s.allocate_next() == s.cidr_at(k)
        assert s.inspected == 1
    assert s.allocate_next() == s.cidr_at(1001) and s.inspected == 2  # jumps the occupied one


class CountingStore(MemoryStore):
    """A MemoryStore that counts reservation writes."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0

    async def create(self, cidr: IPNetwork, node: str) -> Claim:
        self.claims += 1
        return await super().create(cidr, node)


def test_the_allocator_writes_one_reservation_per_family_per_node():
    index = NodeCidrIndex()
    for i in range(2000):
        index.set(f"node-{i:05d}", [v4_node(i)])
    store = CountingStore()
    allocator = Allocator([V4("10.0.0.0/8"), V6("fd00::/48")], index=index, store=store)

    async def assign_all() -> list[tuple[IPNetwork, ...]]:
        return [await allocator.assign(f"new-{k}") for k in range(50)]

    got = asyncio.run(assign_all())
    assert store.claims == 100
    assert got[0] == (v4_node(2000), V6("fd00::/64"))
    assert len({c for pair in got for c in pair}) == 100


def test_the_node_list_is_read_in_pages_and_indexes_every_node():
    count = 2 * LIST_PAGE + 17

    async def scenario() -> tuple[int, int, str]:
        async with FakeKubeApi() as api:
            for i in range(count):
                await api.put_node(api_node(f"node-{i:05d}", str(v4_node(i))))
            watcher = NodeWatcher(client_for(api.url), ClusterState(cluster_cidr=None, cidr_source="test"))
            rv, entries = await asyncio.to_thread(watcher._list)
            return len(entries), len(api.lists()), rv

    indexed, pages, rv = asyncio.run(scenario())
    assert indexed == count
    assert pages == 3
    assert rv == str(count + 1)

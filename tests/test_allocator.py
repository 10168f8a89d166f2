"""The allocator: a free podCIDR per family, reserved before it is returned, never the same twice."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.control.allocator import Allocator, MemoryStore, StoreUnavailable, lease_name, node_hash
from webhook.core.cidrset import RangeExhaustedError
from webhook.core.nodeindex import NodeCidrIndex

N = ipaddress.ip_network


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(cidr="10.244.0.0/16", nodes=None, mask_v4=24, mask_v6=64, grace=600.0, store=None, clock=None):
    index = NodeCidrIndex()
    for name, cidrs in (nodes or {}).items():
        index.set(name, [N(c) for c in cidrs])
    clock = clock or Clock()
    store = store if store is not None else MemoryStore(clock=clock)
    alloc = Allocator([N(c) for c in cidr.split(",")], index=index, store=store, mask_v4=mask_v4,
                      mask_v6=mask_v6, grace=grace, clock=clock)
    return alloc, index, store, clock


def run(coro):
    return asyncio.run(coro)


def test_first_node_gets_the_first_cidr_as_kube_controller_manager_would():
    alloc, *_ = make()
    assert run(alloc.assign("a")) == (N("10.244.0.0/24"),)


def test_existing_nodes_are_skipped():
    alloc, *_ = make(nodes={"x": ["10.244.0.0/24"], "y": ["10.244.1.0/24"]})
    assert run(alloc.assign("a")) == (N("10.244.2.0/24"),)


def test_dual_stack_gives_one_per_family_in_cluster_order():
    alloc, *_ = make("fd00:10:244::/56,10.244.0.0/16")
    assert run(alloc.assign("a")) == (N("fd00:10:244::/64"), N("10.244.0.0/24"))


def test_a_retried_admission_gets_the_same_cidr_back():
    alloc, _, store, _ = make()
    first = run(alloc.assign("a"))
    assert run(alloc.assign("a")) == first
    assert len(store.book) == 1


def test_a_retry_on_another_replica_gets_the_same_cidr_back():
    store = MemoryStore()
    one, *_ = make(store=store)
    two, *_ = make(store=store)
    assert run(one.assign("a")) == run(two.assign("a"))


def test_a_cidr_reserved_by_another_replica_is_skipped():
    store = MemoryStore()
    one, *_ = make(store=store)
    two, *_ = make(store=store)
    a = run(one.assign("a"))
    b = run(two.assign("b"))  # two does not know a's CIDR: the store's create refuses it
    assert a != b and b == (N("10.244.1.0/24"),)


def test_dry_run_computes_but_writes_nothing():
    alloc, _, store, _ = make()
    assert run(alloc.assign("a", dry_run=True)) == (N("10.244.0.0/24"),)
    assert list(store.book) == []
    assert run(alloc.assign("a")) == (N("10.244.0.0/24"),)


def test_exhausted_range_says_how_many_and_what_to_change():
    # field report #7 (kubespray#1712, kubernetes#103898): a /25 cluster-cidr with mask 24 holds none;
    # here a /23 with mask 24 holds two.
    alloc, *_ = make("10.244.0.0/23")
    run(alloc.assign("a"))
    run(alloc.assign("b"))
    with pytest.raises(RangeExhaustedError) as e:
        run(alloc.assign("c"))
    assert "holds 2 node CIDR(s) of /24" in str(e.value)
    assert "larger cluster-cidr" in str(e.value)


def test_orphaned_reservation_is_reclaimed_after_the_grace_period():
    alloc, index, store, clock = make("10.244.0.0/23", grace=600)
    run(alloc.assign("ghost"))          # a forged review: the node never appears
    run(alloc.assign("real"))
    index.set("real", [N("10.244.1.0/24")])
    clock.now += 599
    assert run(alloc.reclaim()) == []
    clock.now += 2
    reclaimed = run(alloc.reclaim())
    assert {r.node for r in reclaimed} == {"ghost", "real"}
    assert list(store.book) == []
    # ghost's CIDR is free again; real's stays taken because the node holds it.
    assert run(alloc.assign("new")) == (N("10.244.0.0/24"),)
    with pytest.raises(RangeExhaustedError):
        run(alloc.assign("newer"))


def test_reclaiming_never_frees_a_cidr_a_live_node_uses():
    alloc, index, _, clock = make("10.244.0.0/24")
    run(alloc.assign("a"))
    index.set("b", [N("10.244.0.0/24")])  # someone else ended up with it (e.g. a hand patch)
    clock.now += 10_000
    run(alloc.reclaim())
    with pytest.raises(RangeExhaustedError):
        run(alloc.assign("c"))


def test_a_deleted_nodes_cidr_becomes_free_again():
    alloc, index, _, _ = make("10.244.0.0/23", nodes={"x": ["10.244.0.0/24"], "y": ["10.244.1.0/24"]})
    with pytest.raises(RangeExhaustedError):
        run(alloc.assign("a"))
    index.remove("x")
    assert run(alloc.assign("a")) == (N("10.244.0.0/24"),)


def test_removing_a_wrong_sized_node_does_not_free_its_neighbours():
    alloc, index, _, _ = make("10.244.0.0/22", nodes={"big": ["10.244.0.0/23"], "n": ["10.244.1.0/24"]})
    index.remove("big")
    got = {run(alloc.assign(f"a{i}"))[0] for i in range(3)}
    assert N("10.244.1.0/24") not in got


class FailingStore(MemoryStore):
    async def create(self, cidr, node):
        raise StoreUnavailable("API unreachable")


def test_store_failure_is_raised_and_nothing_is_marked_taken():
    alloc, *_ = make(store=FailingStore())
    with pytest.raises(StoreUnavailable):
        run(alloc.assign("a"))


class SecondFamilyFails(MemoryStore):
    async def create(self, cidr, node):
        if cidr.version == 6:
            raise StoreUnavailable("boom")
        return await super().create(cidr, node)


def test_all_or_nothing_across_families():
    store = SecondFamilyFails()
    alloc, *_ = make("10.244.0.0/16,fd00::/56", store=store)
    with pytest.raises(StoreUnavailable):
        run(alloc.assign("a"))
    assert list(store.book) == []


def test_concurrent_assignments_in_one_process_never_collide():
    alloc, *_ = make("10.244.0.0/20")

    async def many():
        return await asyncio.gather(*(alloc.assign(f"n{i}") for i in range(16)))

    got = [c for (c,) in run(many())]
    assert len(set(got)) == 16


@pytest.mark.parametrize(("cidr", "name"), [
    ("10.244.1.0/24", "podcidr-v4-10-244-1-0-24"),
    ("fd00:10:244:1::/64", "podcidr-v6-fd000010024400010000000000000000-64"),
    ("::/64", "podcidr-v6-00000000000000000000000000000000-64"),
])
def test_lease_names_are_a_function_of_the_cidr_and_valid_dns_names(cidr, name):
    import re

    assert lease_name(N(cidr)) == name
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63
    assert len(node_hash("x" * 253)) <= 63


@settings(max_examples=150, deadline=None)
@given(
    prefix=st.integers(16, 22),
    mask=st.integers(23, 26),
    existing=st.lists(st.tuples(st.integers(0, 1023), st.integers(22, 27)), max_size=20),
    count=st.integers(1, 40),
    v6=st.booleans(),
)
def test_property_allocations_are_inside_right_sized_and_overlap_nothing(prefix, mask, existing, count, v6):
    if v6:
        cluster = N(f"fd00:10::/{prefix + 96}", strict=False)
        mask6 = mask + 96
        nodes = {f"e{i}": [str(N((int(cluster.network_address) + (off << (128 - mask6 - 2)), plen + 96),
                                  strict=False))] for i, (off, plen) in enumerate(existing)}
        alloc, *_ = make(str(cluster), nodes=nodes, mask_v6=mask6)
        size = mask6
    else:
        cluster = N(f"10.0.0.0/{prefix}")
        nodes = {f"e{i}": [str(N((int(cluster.network_address) + (off << (32 - mask - 2)), plen),
                                  strict=False))] for i, (off, plen) in enumerate(existing)}
        alloc, *_ = make(str(cluster), nodes=nodes, mask_v4=mask)
        size = mask
    taken = [N(c) for cs in nodes.values() for c in cs]
    got = []
    for i in range(count):
        try:
            (c,) = run(alloc.assign(f"n{i}"))
        except RangeExhaustedError:
            break
        got.append(c)
    for c in got:
        assert c.prefixlen == size and c.subnet_of(cluster)
        assert not any(c.overlaps(t) for t in taken)
    assert len(set(got)) == len(got)
    assert not any(a.overlaps(b) for i, a in enumerate(got) for b in got[i + 1:])

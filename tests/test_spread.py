"""Issue 26: replicas look for free blocks apart, and a lost race jumps away from the other's front.

The rules are pure (webhook.core.spread); the allocator applies them and still lets the
claim store decide every race. Lost races are played with a store that answers a create
with another node's claim, as the API's 409 does when another replica got there first.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from webhook.control.allocator import Allocator, MemoryStore
from webhook.core.claims import Claim
from webhook.core.nodeindex import NodeCidrIndex
from webhook.core.spread import Walks, jump_index, start_index
from webhook.service.metrics import MUTATE_CLAIM_OUTCOMES, Metrics

N = ipaddress.ip_network


def test_start_index_is_kube_controller_managers_zero_without_an_identity():
    assert start_index("", 256) == 0


def test_start_index_is_stable_per_identity_and_differs_between_identities():
    assert start_index("flannel-guard-abc_1", 4096) == start_index("flannel-guard-abc_1", 4096)
    starts = {start_index(f"flannel-guard-{i}_x", 4096) for i in range(50)}
    assert len(starts) >= 45  # 50 replicas on 4,096 blocks: a few may share by chance, not most


def test_start_index_spreads_over_the_whole_range():
    starts = [start_index(f"pod-{i}", 4) for i in range(400)]
    assert set(starts) == {0, 1, 2, 3}
    assert min(Counter(starts).values()) >= 60


@pytest.mark.parametrize("capacity", [0, -1])
def test_a_range_without_blocks_is_an_error(capacity: int):
    with pytest.raises(ValueError, match="capacity"):
        start_index("x", capacity)
    with pytest.raises(ValueError, match="capacity"):
        jump_index([], capacity)


@pytest.mark.parametrize(("occupied", "capacity", "expected"), [
    ([], 16, 8),                          # nothing used: the middle of the range
    ([(0, 3)], 16, 10),                   # free 4..15: its middle
    ([(0, 3), (6, 15)], 16, 5),           # free 4..5 only
    ([(0, 15)], 16, None),                # full
    ([(4, 11)], 16, 0),                   # free 12..15 and 0..3 are one run across the wrap
    ([(0, 0), (3, 3), (6, 6)], 8, 2),     # three runs of two (1..2 first): its upper middle
])
def test_jump_index_is_the_middle_of_the_largest_free_run(occupied, capacity, expected):
    assert jump_index(occupied, capacity) == expected


@st.composite
def occupancy(draw: st.DrawFn) -> tuple[list[tuple[int, int]], int]:
    capacity = draw(st.integers(1, 200))
    used = sorted(draw(st.sets(st.integers(0, capacity - 1))))
    runs: list[tuple[int, int]] = []
    for i in used:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs, capacity


@given(occupancy())
def test_jump_index_is_free_and_as_far_from_the_run_ends_as_any_free_index(case):
    runs, capacity = case
    used = {i for a, b in runs for i in range(a, b + 1)}
    got = jump_index(runs, capacity)
    if len(used) == capacity:
        assert got is None
        return
    assert got is not None and got not in used

    def room(i: int) -> int:
        """Free indices from i forwards (wrapping) before an occupied one."""
        n = 0
        while n < capacity and (i + n) % capacity not in used:
            n += 1
        return n

    def behind(i: int) -> int:
        n = 0
        while n < capacity and (i - n - 1) % capacity not in used:
            n += 1
        return n

    if not used:
        assert got == capacity // 2
        return
    # The largest free run holds it, and it sits at that run's middle.
    largest = max(room(i) for i in range(capacity) if i not in used and (i - 1) % capacity in used)
    assert room(got) + behind(got) == largest
    assert 0 <= room(got) - behind(got) <= 1


class RacingStore(MemoryStore):
    """A claim store where another replica has just claimed ``stolen`` (unseen until the create)."""

    def __init__(self, stolen: set[ipaddress.IPv4Network]) -> None:
        super().__init__()
        self.stolen = stolen
        self.creates: list[ipaddress.IPv4Network] = []

    async def create(self, cidr, node):  # type: ignore[override]
        self.creates.append(cidr)
        if cidr in self.stolen:
            self.stolen.discard(cidr)
            held = Claim(cidr, "other-replicas-node", 1.0, uid="u", version="1", acquired=1.0)
            self.book.put(held)
            return held
        return await super().create(cidr, node)


def allocator(store: MemoryStore, identity: str = "", cidr: str = "10.244.0.0/20") -> Allocator:
    return Allocator([N(cidr)], index=NodeCidrIndex(), store=store, identity=identity)


def test_without_an_identity_the_order_is_kube_controller_managers():
    alloc = allocator(MemoryStore())
    got = [asyncio.run(alloc.assign(f"n{i}"))[0] for i in range(3)]
    assert got == [N("10.244.0.0/24"), N("10.244.1.0/24"), N("10.244.2.0/24")]


def test_an_identity_starts_the_walk_at_its_own_offset_then_next_fit():
    identity = "flannel-guard-7d9c_0a1b2c3d4e5f"
    start = start_index(identity, 16)
    alloc = allocator(MemoryStore(), identity)
    got = [asyncio.run(alloc.assign(f"n{i}"))[0] for i in range(2)]
    base = int(N("10.244.0.0/20").network_address)
    assert [(int(c.network_address) - base) >> 8 for c in got] == [start, (start + 1) % 16]


def test_a_lost_race_jumps_to_the_middle_of_the_largest_free_run_and_reports_it():
    store = RacingStore({N("10.244.1.0/24")})
    alloc = allocator(store)
    outcomes: list[str] = []
    assert asyncio.run(alloc.assign("a", report=outcomes.append)) == (N("10.244.0.0/24"),)
    # 1 is lost to the other replica: not 2 next (the other's front walks there), but the middle
    # of the free run 2..15 (block 9).
    assert asyncio.run(alloc.assign("b", report=outcomes.append)) == (N("10.244.9.0/24"),)
    assert store.creates == [N("10.244.0.0/24"), N("10.244.1.0/24"), N("10.244.9.0/24")]
    assert outcomes == ["claimed", "lost", "claimed"]
    assert asyncio.run(alloc.assign("b", report=outcomes.append)) == (N("10.244.9.0/24"),)
    assert outcomes[-1] == "renewed"


def test_the_next_fit_order_alone_tries_the_next_block_after_a_lost_race(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(Allocator, "order", "next-fit")
    alloc = allocator(RacingStore({N("10.244.1.0/24")}))
    asyncio.run(alloc.assign("a"))
    assert asyncio.run(alloc.assign("b")) == (N("10.244.2.0/24"),)


def test_a_burst_that_loses_several_races_at_once_jumps_once():
    """Claims taken before the jump and lost after it are the same meeting of two fronts."""
    stolen = {N(f"10.244.{i}.0/24") for i in range(4)}
    store = RacingStore(set(stolen))
    alloc = allocator(store)

    async def burst() -> list[tuple[ipaddress.IPv4Network, ...]]:
        return list(await asyncio.gather(*(alloc.assign(f"n{i}") for i in range(4))))

    got = sorted(c for cidrs in asyncio.run(burst()) for c in cidrs)
    # Four lost at 0..3; one jump to the middle of 4..15 (block 9 or 10), then next-fit from there.
    assert len(set(got)) == 4 and not set(got) & stolen
    base = int(N("10.244.0.0/20").network_address)
    indices = sorted((int(c.network_address) - base) >> 8 for c in got)
    assert indices == list(range(indices[0], indices[0] + 4))
    assert indices[0] >= 8


def test_a_dry_run_neither_writes_nor_reports():
    store = RacingStore(set())
    outcomes: list[str] = []
    assert asyncio.run(allocator(store).assign("a", dry_run=True, report=outcomes.append))
    assert store.creates == [] and outcomes == []


def test_the_mutate_claims_counter_exports_every_outcome_from_the_start():
    metrics = Metrics()
    metrics.mutate_claim("lost")
    metrics.mutate_claim("claimed")
    metrics.mutate_claim("claimed")
    metrics.mutate_claim("not-an-outcome")  # a closed label set: ignored
    text = generate_latest(metrics.registry).decode()
    values = {o: float(next(line.split()[-1] for line in text.splitlines()
                            if line.startswith(f'flannel_guard_mutate_claims_total{{outcome="{o}"}}')))
              for o in MUTATE_CLAIM_OUTCOMES}
    assert values == {"claimed": 2.0, "renewed": 0.0, "lost": 1.0, "unavailable": 0.0}


def test_the_leading_replica_walks_in_kube_controller_managers_order_and_a_follower_its_own():
    follows = [False]
    identity = "replica-b"
    alloc = Allocator([N("10.244.0.0/20")], index=NodeCidrIndex(), store=MemoryStore(),
                      identity=identity, follower=lambda: follows[0])
    base = int(N("10.244.0.0/20").network_address)

    def block() -> int:
        return (int(asyncio.run(alloc.assign(f"n{block.calls}"))[0].network_address) - base) >> 8
    block.calls = 0  # type: ignore[attr-defined]

    def next_block() -> int:
        block.calls += 1  # type: ignore[attr-defined]
        return block()

    start = start_index(identity, 16)
    assert start not in (0, 1, 2)
    assert [next_block(), next_block()] == [0, 1]            # leading (or alone): from block 0
    follows[0] = True
    assert [next_block(), next_block()] == [start, start + 1]  # another leads: its own region
    follows[0] = False
    assert next_block() == 2                                 # leading again: where that walk stopped


def test_walks_keep_each_place_and_ignore_an_empty_identity():
    walks = Walks("r")
    assert walks.switch(4, 16, 0, own=False) is None
    assert walks.switch(4, 16, 3, own=True) == start_index("r", 16)
    assert walks.switch(4, 16, 9, own=False) == 3
    assert walks.switch(4, 16, 4, own=True) == 9
    assert walks.switch(6, 16, 0, own=False) is None        # each family on its own
    assert Walks("").switch(4, 16, 5, own=True) is None     # no identity: one walk only


def test_a_replica_follows_only_while_another_holds_the_leader_lease():
    from types import SimpleNamespace

    from webhook.kube.leader import LeaderElector

    elector = LeaderElector.__new__(LeaderElector)
    elector.identity = "me"
    elector._election = None
    assert not elector.follows()  # not campaigning yet: no other replica known
    elector._election = SimpleNamespace(observed_record=None)
    assert not elector.follows()
    elector._election = SimpleNamespace(observed_record=SimpleNamespace(holder_identity="me"))
    assert not elector.follows()  # leading
    elector._election = SimpleNamespace(observed_record=SimpleNamespace(holder_identity="other"))
    assert elector.follows()
    elector._election = SimpleNamespace(observed_record=SimpleNamespace(holder_identity=""))
    assert not elector.follows()  # released

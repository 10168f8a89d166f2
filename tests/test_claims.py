"""Claims as pure data (webhook/core/claims.py) and the claimer's order of writes
(webhook/control/claimer.py).

The property at the end is the project's promise in miniature: replicas whose
knowledge of the claims lags arbitrarily behind, writing through one exclusive
store, never admit one CIDR for two nodes.
"""

from __future__ import annotations

import asyncio
import ipaddress

from conftest import node
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.control.allocator import MemoryStore, StoreUnavailable
from webhook.control.claimer import Claimer
from webhook.core.claims import (
    Claim,
    ClaimBook,
    ClaimConflict,
    ClaimOutcome,
    conflict_message,
    conflicts,
    newer,
    suggest_free,
    to_write,
)
from webhook.core.nodeindex import NodeCidrIndex
from webhook.core.rules import Mode, Verdict, claim_verdict
from webhook.core.rules.node import claimed_cidrs

N = ipaddress.ip_network


def test_the_book_indexes_claims_by_cidr_holder_and_overlap():
    book = ClaimBook()
    heard: list[tuple[str, bool]] = []
    book.subscribe(lambda cidr, held: heard.append((str(cidr), held)))
    book.put(Claim(N("10.244.1.0/24"), "a", 10.0, uid="u1", version="5"))
    book.put(Claim(N("fd00::/64"), "a", 10.0))
    assert [c.cidr for c in book.of_node("a")] == [N("10.244.1.0/24"), N("fd00::/64")]
    assert [c.node for c in book.overlapping(N("10.244.1.128/25"))] == ["a"]
    assert book.overlapping(N("10.244.1.0/24"), exclude="a") == []
    # The same CIDR, another holder (a Lease deleted and created again): re-linked.
    book.put(Claim(N("10.244.1.0/24"), "b", 11.0, uid="u2", version="9"))
    assert [c.cidr for c in book.of_node("a")] == [N("fd00::/64")]
    assert not book.drop(N("10.244.1.0/24"), uid="u1")     # an old Lease's DELETED event: kept
    assert book.drop(N("10.244.1.0/24"), uid="u2")
    book.replace_all([Claim(N("10.244.2.0/24"), "c", 1.0)])
    assert [c.node for c in book] == ["c"]
    # A new holder is heard too (the pending claims follow holders), as held again.
    assert heard == [("10.244.1.0/24", True), ("fd00::/64", True), ("10.244.1.0/24", True),
                     ("10.244.1.0/24", False), ("fd00::/64", False), ("10.244.2.0/24", True)]


def test_a_late_watch_event_never_overwrites_a_newer_write():
    known = Claim(N("10.244.1.0/24"), "b", 0.0, version="12")
    assert not newer(Claim(N("10.244.1.0/24"), "a", 0.0, version="11"), known)
    assert newer(Claim(N("10.244.1.0/24"), "b", 0.0, version="13"), known)
    assert newer(Claim(N("10.244.1.0/24"), "b", 0.0, version="opaque"), known)
    assert newer(Claim(N("10.244.1.0/24"), "b", 0.0), None)


def test_conflicts_name_other_nodes_claims_and_stored_nodes_never_the_node_itself():
    book = ClaimBook()
    book.put(Claim(N("10.244.1.0/24"), "a", 100.0))
    stored = NodeCidrIndex()
    stored.set("s", [N("10.244.2.0/24")])
    assert conflicts("a", [N("10.244.1.0/24")], book, stored) == []
    assert conflicts("b", [N("10.244.1.0/24"), N("10.244.2.0/24"), N("10.244.3.0/24")], book, stored) == [
        ClaimConflict(N("10.244.1.0/24"), "a", N("10.244.1.0/24"), 100.0),
        ClaimConflict(N("10.244.2.0/24"), "s", N("10.244.2.0/24"), None),
    ]


def test_only_a_fresh_claim_of_the_same_node_spares_the_write():
    book = ClaimBook()
    book.put(Claim(N("10.244.1.0/24"), "a", 100.0))
    wanted = [N("10.244.1.0/24"), N("10.244.2.0/24")]
    assert to_write("a", wanted, book, now=130.0, fresh=60.0) == [N("10.244.2.0/24")]
    assert to_write("a", wanted, book, now=161.0, fresh=60.0) == wanted   # too old: confirm it
    assert to_write("b", wanted, book, now=130.0, fresh=60.0) == wanted


def test_the_suggestion_skips_stored_and_claimed_cidrs_and_the_message_says_who_and_since_when():
    book = ClaimBook()
    book.put(Claim(N("10.244.0.0/24"), "a", 1_800_000_000.0))
    stored = NodeCidrIndex()
    stored.set("s", [N("10.244.1.0/24")])
    free = suggest_free([N("10.244.0.0/16")], lambda v: 24, stored, book.index)
    assert free == [N("10.244.2.0/24")]
    held = ClaimConflict(N("10.244.0.0/24"), "a", N("10.244.0.0/24"), 1_800_000_000.0)
    text = conflict_message("b", [held], free)
    assert "held by node a (claimed since 2027-01-15T08:00:00Z)" in text
    patch = """'{"spec":{"podCIDR":"10.244.2.0/24","podCIDRs":["10.244.2.0/24"]}}'"""
    assert f"kubectl patch node b -p {patch}" in text
    on_node = ClaimConflict(N("10.244.1.0/24"), "s", N("10.244.1.0/24"), None)
    stored_text = conflict_message("b", [on_node], [])
    assert "stored on that Node" in stored_text and "no free CIDR is known" in stored_text


def test_claimed_cidrs_are_those_the_write_sets_once_per_family():
    # pkg/apis/core/validation ValidateNodeUpdate: podCIDRs change only from none to some.
    assert claimed_cidrs("CREATE", node("a", "10.244.1.0/24", "fd00::/64"), None) == [
        N("10.244.1.0/24"), N("fd00::/64")]
    assert claimed_cidrs("UPDATE", node("a", "10.244.1.0/24"), node("a")) == [N("10.244.1.0/24")]
    assert claimed_cidrs("UPDATE", node("a", "10.244.1.0/24"), node("a", "10.244.1.0/24")) == []
    assert claimed_cidrs("CREATE", node("a"), None) == []
    assert claimed_cidrs("CREATE", node("a", "10.244.1.5/24"), None) == []     # refused by the rules
    assert claimed_cidrs("CREATE", node("a", "nonsense"), None) == []
    assert claimed_cidrs("CREATE", node("a", "10.244.1.0/24", "10.244.2.0/24"), None) == [N("10.244.1.0/24")]
    assert claimed_cidrs("DELETE", None, node("a", "10.244.1.0/24")) == []


def test_claim_verdicts_by_outcome_mode_and_policy():
    ok = Verdict(allowed=True, warnings=("flannel-guard: a note",))
    conflict = ClaimOutcome("conflict", (ClaimConflict(N("10.244.1.0/24"), "a", N("10.244.1.0/24"), None),))
    assert claim_verdict(ok, ClaimOutcome("claimed"), Mode.ENFORCE, "b", []) is ok
    denied = claim_verdict(ok, conflict, Mode.ENFORCE, "b", [N("10.244.9.0/24")])
    assert (denied.allowed, denied.code, denied.reason) == (False, 403, "PodCIDRClaimed")
    assert "10.244.9.0/24" in denied.message
    warned = claim_verdict(ok, conflict, Mode.WARN, "b", [])
    assert warned.allowed and warned.warnings[0].startswith("flannel-guard (warn mode) would deny")
    down = ClaimOutcome("unavailable", error="Lease create answered 500")
    refused = claim_verdict(ok, down, Mode.ENFORCE, "b", [])
    assert (refused.allowed, refused.code, refused.reason) == (False, 503, "ClaimUnavailable")
    assert "retry" in refused.message
    admitted = claim_verdict(ok, down, Mode.ENFORCE, "b", [], on_failure="admit")
    assert admitted.allowed and "admitted unclaimed" in admitted.warnings[0]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_claimer_writes_once_confirms_in_memory_and_undoes_half_a_write():
    async def scenario() -> None:
        clock = Clock()
        store = MemoryStore(clock=clock)
        claimer = Claimer(store, NodeCidrIndex(), fresh=60, clock=clock)
        assert (await claimer.claim("a", [N("10.244.1.0/24")])).status == "claimed"
        assert (await claimer.claim("a", [N("10.244.1.0/24")])).status == "known"
        assert (await claimer.claim("b", [N("10.244.1.0/24")], dry_run=True)).status == "conflict"
        assert (await claimer.claim("b", [N("10.244.2.0/24")], dry_run=True)).status == "dry-run"
        assert store.book.get(N("10.244.2.0/24")) is None

        class V6Fails(MemoryStore):
            async def create(self, cidr, node):
                if cidr.version == 6:
                    raise StoreUnavailable("Lease create answered 500")
                return await super().create(cidr, node)

        failing = V6Fails(clock=clock)
        half = Claimer(failing, NodeCidrIndex(), clock=clock)
        outcome = await half.claim("c", [N("10.244.3.0/24"), N("fd00::/64")])
        assert outcome.status == "unavailable" and "500" in outcome.error
        assert list(failing.book) == []  # the IPv4 claim made on the way was deleted again
    asyncio.run(scenario())


def test_a_deleted_node_releases_only_the_claims_made_before_it_was_indexed():
    async def scenario() -> None:
        clock = Clock()
        store = MemoryStore(clock=clock)
        index = NodeCidrIndex()
        claimer = Claimer(store, index, clock=clock)
        await claimer.claim("a", [N("10.244.1.0/24")])
        clock.now += 1
        index.set("a", [N("10.244.1.0/24")])      # stored and seen
        clock.now += 1
        index.remove("a")                        # deleted: the release runs as a task
        await asyncio.gather(*claimer._tasks)
        assert store.book.get(N("10.244.1.0/24")) is None
        # A claim renewed after the node entered the index (it re-registered) is kept.
        await claimer.claim("b", [N("10.244.2.0/24")])
        index.set("b", [N("10.244.2.0/24")])
        clock.now += 5
        await store.renew(store.book.get(N("10.244.2.0/24")))
        assert await claimer.release_node("b", before=clock.now - 1) == 0
        assert store.book.get(N("10.244.2.0/24")) is not None
    asyncio.run(scenario())


# --- the property: lagging replicas, one exclusive store, never two holders ---------------------


class SharedApi:
    """The API's exclusive create, with each replica's book fed by a lagging, in-order event queue."""

    def __init__(self, replicas: int) -> None:
        self.leases: dict = {}
        self.queues: list[list[Claim]] = [[] for _ in range(replicas)]
        self.books = [ClaimBook() for _ in range(replicas)]
        self.writes = 0

    def store(self, replica: int) -> MemoryStore:
        api = self

        class Store(MemoryStore):
            async def create(self, cidr, node):
                await asyncio.sleep(0)
                held = api.leases.get(cidr)
                if held is None:
                    api.writes += 1
                    held = Claim(cidr, node, 1.0, uid=f"u{api.writes}", version=str(api.writes))
                    api.leases[cidr] = held
                    for q in (q for i, q in enumerate(api.queues) if i != replica):
                        q.append(held)
                self.book.put(held)
                return held

        return Store(api.books[replica])

    def deliver(self, replica: int) -> None:
        if self.queues[replica]:
            self.books[replica].put(self.queues[replica].pop(0))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 2), st.integers(0, 5), st.integers(0, 3)),
    st.tuples(st.just("deliver"), st.integers(0, 2), st.just(0), st.just(0)),
), max_size=40))
def test_property_replicas_with_any_lag_never_admit_one_cidr_for_two_nodes(steps):
    api = SharedApi(3)
    claimers = [Claimer(api.store(i), NodeCidrIndex(), fresh=1e9, clock=lambda: 2.0) for i in range(3)]
    admitted: dict = {}

    async def one(replica: int, name: str, cidr) -> None:
        outcome = await claimers[replica].claim(name, [cidr])
        if outcome.ok:
            admitted.setdefault(cidr, set()).add(name)

    async def scenario() -> None:
        # Writes start as tasks and interleave at the store's awaits; deliveries land in between.
        tasks = []
        for what, replica, n, c in steps:
            if what == "write":
                tasks.append(asyncio.create_task(one(replica, f"node-{n}", N(f"10.244.{c}.0/24"))))
            else:
                api.deliver(replica)
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert all(len(holders) == 1 for holders in admitted.values()), admitted


def test_a_claim_whose_node_never_appeared_is_freed_once_the_index_has_moved_past_it():
    """Forged Node CREATEs (issue 15): their claims must not hold the pool for the grace period."""
    async def scenario() -> None:
        clock = Clock()
        store = MemoryStore(clock=clock)
        index = NodeCidrIndex()
        confirmed: list[float | None] = [None]
        claimer = Claimer(store, index, clock=clock, grace=600, orphan_after=120,
                          index_confirmed=lambda: confirmed[0])
        await claimer.claim("forged", [N("10.244.1.0/24")])
        await claimer.claim("real", [N("10.244.2.0/24")])
        index.set("real", [N("10.244.2.0/24")])        # the real one was stored and seen
        clock.now += 121
        assert await claimer.reclaim() == []           # no word from the API since: keep both
        confirmed[0] = clock.now - 30                  # seen, but before the claim was 120 s old
        assert await claimer.reclaim() == []
        confirmed[0] = clock.now                       # the index has moved past that moment
        [freed] = await claimer.reclaim()
        assert freed.node == "forged" and store.book.get(N("10.244.1.0/24")) is None
        assert store.book.get(N("10.244.2.0/24")) is not None   # a stored node's claim waits the grace
    asyncio.run(scenario())

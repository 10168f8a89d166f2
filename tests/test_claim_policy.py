"""Issue 28's decisions as plain data (webhook/core/claimpolicy.py), the book's gate, the cap
(webhook/control/pending.py), and what the allocator and the claimer do with them.

Every reason a claim is not believed, every figure of the cap, and the orphan rule's
inputs one at a time; properties over random CIDRs and times with hypothesis.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_claims import Clock

from webhook.control.allocator import Allocator, ClaimWithheld, MemoryStore, lease_name
from webhook.control.claimer import Claimer
from webhook.control.pending import ClaimGate, PendingClaims
from webhook.core.cidr import parse_cidr_list
from webhook.core.claimpolicy import (
    ClaimPolicy,
    distrust,
    exempt,
    orphan,
    pending,
    pending_cap,
    pool_size,
    renewable,
)
from webhook.core.claims import Claim, ClaimBook
from webhook.core.nodeindex import NodeCidrIndex

N = ipaddress.ip_network
NOW = 1_800_000_000.0
POLICY = ClaimPolicy(parse_cidr_list("10.244.0.0/16,fd00:10:244::/56"))


def judge(cidr: str, lease: str | None = None, *times: float, policy: ClaimPolicy = POLICY) -> str | None:
    net = N(cidr)
    return distrust(net, lease_name(net) if lease is None else lease, times or (NOW,), policy, NOW)


# -- trust -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cidr", "lease", "times", "reason"), [
    ("10.244.7.0/24", None, (NOW,), None),
    ("10.244.7.0/24", "", (NOW,), None),                                  # in memory: named by construction
    ("fd00:10:244:7::/64", None, (NOW,), None),
    ("10.244.7.0/24", "podcidr-v4-10-244-8-0-24", (NOW,), "name"),        # another CIDR's Lease
    ("10.244.7.0/24", "podcidr-everything", (NOW,), "name"),
    ("10.244.0.0/16", "podcidr-v4-10-244-0-0-24", (NOW,), "name"),        # the issue's /16, a /24's name
    ("10.244.0.0/16", None, (NOW,), "mask"),                              # its own name, the wrong size
    ("10.244.7.0/25", None, (NOW,), "mask"),
    ("fd00:10:244:7::/80", None, (NOW,), "mask"),
    ("10.245.7.0/24", None, (NOW,), "outside"),
    ("fd00:10:245::/64", None, (NOW,), "outside"),
    ("10.244.7.0/24", None, (NOW + 60,), None),                            # within the skew
    ("10.244.7.0/24", None, (NOW + 61,), "future"),
    ("10.244.7.0/24", None, (NOW - 5, 4_070_908_800.0), "future"),        # renewTime 2099
    ("10.244.7.0/24", None, (0.0, NOW), None),                            # an absent time is no time
])
def test_a_claim_is_believed_only_if_it_is_one(cidr, lease, times, reason):
    assert judge(cidr, lease, *times) == reason


def test_with_the_cluster_cidr_unknown_the_range_is_not_judged_but_the_rest_is():
    unknown = ClaimPolicy(None)
    assert judge("192.168.7.0/24", policy=unknown) is None
    assert judge("192.168.7.0/25", policy=unknown) == "mask"
    assert judge("192.168.7.0/24", "podcidr-x", policy=unknown) == "name"


@settings(max_examples=300, deadline=None)
@given(block=st.integers(0, 255), other=st.integers(0, 255), ahead=st.floats(-1e9, 1e9))
def test_a_node_block_in_its_own_lease_is_believed_exactly_when_not_ahead(block, other, ahead):
    cidr = N(f"10.244.{block}.0/24")
    expected = "future" if ahead > POLICY.skew else None
    assert distrust(cidr, lease_name(cidr), (NOW + ahead,), POLICY, NOW) == expected
    # Under another block's Lease name it is never believed, whatever its time.
    if other != block:
        assert distrust(cidr, lease_name(N(f"10.244.{other}.0/24")), (NOW,), POLICY, NOW) == "name"


# -- the cap -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("cidr", "mask", "pool", "cap"), [
    ("10.244.0.0/16", 24, 256, 64),
    ("10.244.0.0/14", 24, 1024, 64),        # the number is the smaller
    ("10.244.0.0/20", 24, 16, 4),           # the share is the smaller
    ("10.244.0.0/22", 24, 4, 1),
    ("10.244.0.0/24", 24, 1, 1),            # never 0: one join at a time always works
    ("10.244.0.0/24", 28, 16, 4),
])
def test_the_cap_is_the_smaller_of_64_and_a_quarter_of_the_pool(cidr, mask, pool, cap):
    policy = ClaimPolicy(parse_cidr_list(cidr), mask_v4=mask)
    assert (pool_size(policy), pending_cap(policy)) == (pool, cap)


def test_dual_stack_counts_the_smaller_family_and_an_unknown_pool_the_number():
    assert pool_size(ClaimPolicy(parse_cidr_list("10.244.0.0/20,fd00::/48"))) == 16
    assert pending_cap(ClaimPolicy(None)) == 64


@given(prefix=st.integers(8, 30), mask=st.integers(8, 32), most=st.integers(1, 500),
       share=st.floats(0.01, 1.0))
def test_the_cap_is_at_least_one_and_never_above_either_figure(prefix, mask, most, share):
    policy = ClaimPolicy(parse_cidr_list(f"10.0.0.0/{prefix}"), mask_v4=mask, pending_max=most,
                         pending_share=share)
    cap = pending_cap(policy)
    assert 1 <= cap <= most
    assert cap <= max(1, int(pool_size(policy) * share))


def test_pending_means_the_holder_does_not_hold_that_cidr():
    index = NodeCidrIndex()
    index.set("node-0", [N("10.244.0.0/24")])
    assert not pending(N("10.244.0.0/24"), "node-0", index.cidrs_of)
    assert pending(N("10.244.9.0/24"), "node-0", index.cidrs_of)      # stored with another podCIDR
    assert pending(N("10.244.9.0/24"), "ghost", index.cidrs_of)       # not stored


@pytest.mark.parametrize(("node", "unassigned", "mine", "expected"), [
    ("worker", True, 0, True), ("worker", True, 1, False), ("worker", False, 0, False), ("", True, 0, False)])
def test_only_a_stored_node_without_a_podcidr_is_exempt_and_only_for_its_first_claim(
        node, unassigned, mine, expected):
    assert exempt(node, unassigned, mine) is expected


# -- orphans and renewals ----------------------------------------------------------------------


@pytest.mark.parametrize(("acquired", "is_pending", "confirmed", "expected"), [
    (NOW - 120, True, NOW, True),
    (NOW - 119, True, NOW, False),          # younger than the orphan age
    (NOW - 120, False, NOW, False),         # its holder holds it: the grace decides
    (NOW - 120, True, None, False),         # no word from the API (standalone): the grace decides
    (NOW - 120, True, NOW - 1, False),      # the index not confirmed since it came of age
])
def test_an_orphan_is_pending_old_by_acquisition_and_the_index_says_so(acquired, is_pending, confirmed,
                                                                        expected):
    assert orphan(acquired, is_pending, NOW, confirmed, 120) is expected


@given(acquired=st.floats(0, NOW), renewed=st.floats(0, NOW), stored=st.booleans())
def test_renewals_move_neither_the_orphan_rule_nor_the_renewal_refusal(acquired, renewed, stored):
    """Both read the acquisition only: a claim renewed a second ago is as old as when it was made."""
    claim = Claim(N("10.244.1.0/24"), "n", max(acquired, renewed), acquired=acquired)
    old = NOW - claim.acquired_at >= 120
    assert orphan(claim.acquired_at, True, NOW, NOW, 120) is old
    assert renewable(claim.acquired_at, stored, NOW, 120) is (stored or not old)


# -- the book's gate ---------------------------------------------------------------------------


def gated(policy: ClaimPolicy = POLICY, clock: Clock | None = None) -> tuple[ClaimBook, list]:
    book = ClaimBook(gate=ClaimGate(lambda: policy, clock or (lambda: NOW)))
    heard: list[tuple[str, bool]] = []
    book.subscribe(lambda cidr, held: heard.append((str(cidr), held)))
    return book, heard


def lease_claim(cidr: str, node: str = "n", since: float = NOW, name: str | None = None, uid: str = "u",
                version: str = "1") -> Claim:
    net = N(cidr)
    return Claim(net, node, since, uid=uid, version=version, acquired=since,
                 lease=lease_name(net) if name is None else name)


def test_an_untrusted_claim_is_set_apart_and_occupies_nothing():
    book, heard = gated()
    book.put(lease_claim("10.244.0.0/16", name="podcidr-v4-10-244-0-0-24", since=4_070_908_800.0))
    assert len(book) == 0 and heard == [] and not list(book.index.overlapping(N("10.244.3.0/24")))
    [(key, entry)] = book.untrusted.items()
    assert key == "podcidr-v4-10-244-0-0-24" and entry.reason == "name"
    book.drop(N("10.244.0.0/16"), uid="u", lease="podcidr-v4-10-244-0-0-24")  # the watch's DELETED
    assert not book.untrusted


def test_a_believed_lease_rewritten_into_a_lie_frees_its_cidr():
    book, heard = gated()
    book.put(lease_claim("10.244.5.0/24", uid="u5"))
    book.put(lease_claim("10.244.5.0/24", uid="u5", version="2", since=4_070_908_800.0))
    assert book.get(N("10.244.5.0/24")) is None
    assert heard == [("10.244.5.0/24", True), ("10.244.5.0/24", False)]
    assert book.untrusted["podcidr-v4-10-244-5-0-24"].reason == "future"
    # Another Lease's lie about the same CIDR leaves a believed claim alone.
    book.put(lease_claim("10.244.6.0/24", uid="u6"))
    book.put(lease_claim("10.244.6.0/24", uid="evil", name="podcidr-evil"))
    assert book.get(N("10.244.6.0/24")) is not None


def test_retrust_follows_the_cluster_cidr_and_a_relist_keeps_both_kinds():
    current = [POLICY]
    book = ClaimBook(gate=ClaimGate(lambda: current[0], lambda: NOW))
    book.replace_all([lease_claim("10.244.1.0/24", uid="a"), lease_claim("10.245.1.0/24", uid="b")])
    assert [str(c.cidr) for c in book] == ["10.244.1.0/24"] and len(book.untrusted) == 1
    current[0] = ClaimPolicy(parse_cidr_list("10.245.0.0/16"))
    book.retrust()
    assert [str(c.cidr) for c in book] == ["10.245.1.0/24"]
    assert [u.reason for u in book.untrusted.values()] == ["outside"]


def test_the_untrusted_are_bounded():
    book, _ = gated()
    for i in range(ClaimBook.UNTRUSTED_MAX + 50):
        book.put(lease_claim("10.244.1.0/24", name=f"podcidr-junk-{i}", uid=str(i)))
    assert len(book.untrusted) == ClaimBook.UNTRUSTED_MAX and len(book) == 0


# -- the cap, the allocator and the claimer ----------------------------------------------------


def setup(cluster: str = "10.244.0.0/20") -> tuple[Clock, MemoryStore, NodeCidrIndex, set, PendingClaims]:
    clock = Clock()
    policy = ClaimPolicy(parse_cidr_list(cluster), orphan_after=120)
    store = MemoryStore(ClaimBook(gate=ClaimGate(lambda: policy, clock)), clock=clock)
    index = NodeCidrIndex()
    unassigned: set[str] = set()
    return clock, store, index, unassigned, PendingClaims(store.book, index, lambda: policy,
                                                          unassigned=lambda: unassigned, clock=clock)


def test_mutate_claims_up_to_the_cap_then_withholds_and_a_stored_node_is_exempt():
    async def scenario() -> None:
        clock, store, index, unassigned, gate = setup()           # 16 blocks: a cap of 4
        alloc = Allocator(parse_cidr_list("10.244.0.0/20"), index=index, store=store, clock=clock,
                          pending=gate)
        given = [await alloc.assign(f"forged-{i}") for i in range(4)]
        assert len({c for cs in given for c in cs}) == 4 and gate.count() == 4
        with pytest.raises(ClaimWithheld, match="at most 4"):
            await alloc.assign("forged-4")
        assert gate.refused == 1
        unassigned.add("real")                                     # stored without a podCIDR: the loop's
        real = await alloc.assign("real")
        assert gate.count() == 5
        unassigned.discard("real")                                 # the loop's patch is stored,
        index.set("real", real)
        index.set("forged-0", given[0])                            # and a join completes: room for one
        assert gate.count() == 3
        assert await alloc.assign("forged-5")
        with pytest.raises(ClaimWithheld):
            await alloc.assign("forged-6")
    asyncio.run(scenario())


def test_a_forged_name_renewed_past_the_orphan_age_is_refused_a_stored_one_is_not():
    async def scenario() -> None:
        clock, store, index, unassigned, gate = setup()
        alloc = Allocator(parse_cidr_list("10.244.0.0/20"), index=index, store=store, clock=clock,
                          pending=gate)
        first = await alloc.assign("forged")
        clock.now += 60
        assert await alloc.assign("forged") == first               # a retry within the age: renewed
        claim = store.book.get(first[0])
        assert claim is not None and claim.since == clock.now and claim.acquired_at == clock.now - 60
        clock.now += 60
        with pytest.raises(ClaimWithheld, match="orphan age"):
            await alloc.assign("forged")
        unassigned.add("forged")                                    # now it is a stored Node
        assert await alloc.assign("forged") == first
    asyncio.run(scenario())


def test_validate_beyond_the_cap_is_judged_without_claiming():
    async def scenario() -> None:
        clock, store, index, unassigned, gate = setup()
        claimer = Claimer(store, index, clock=clock, pending=gate)
        outcomes = [await claimer.claim(f"ghost-{i}", [N(f"10.244.{i}.0/24")]) for i in range(6)]
        assert [o.status for o in outcomes] == ["claimed"] * 4 + ["capped"] * 2
        assert "at most 4" in outcomes[-1].error and len(store.book) == 4
        # A conflict known in memory is still refused beyond the cap.
        assert (await claimer.claim("ghost-9", [N("10.244.0.0/24")])).status == "conflict"
        # kube-controller-manager's patch of a stored Node without a podCIDR: past the cap, once.
        unassigned.add("real")
        assert (await claimer.claim("real", [N("10.244.8.0/24")])).status == "claimed"
        assert (await claimer.claim("real", [N("10.244.9.0/24")])).status == "capped"
    asyncio.run(scenario())


def test_orphans_by_acquisition_however_renewed_and_a_holder_stored_with_another_cidr():
    async def scenario() -> None:
        clock, store, index, _, gate = setup()
        confirmed: list[float | None] = [None]
        claimer = Claimer(store, index, clock=clock, grace=600, orphan_after=120,
                          index_confirmed=lambda: confirmed[0], pending=gate)
        index.set("node-0", [N("10.244.0.0/24")])
        await claimer.claim("node-0", [N("10.244.0.0/24")])         # its own: held, not pending
        await claimer.claim("node-0", [N("10.244.9.0/24")])         # forged under its name
        await claimer.claim("forged", [N("10.244.1.0/24")])
        for _ in range(3):                                          # renewed every 50 s
            clock.now += 50
            for claim in list(store.book):
                await store.renew(claim)
        confirmed[0] = clock.now
        freed = sorted(str(r.cidr) for r in await claimer.reclaim())
        assert freed == ["10.244.1.0/24", "10.244.9.0/24"]
        assert [str(c.cidr) for c in store.book] == ["10.244.0.0/24"]
    asyncio.run(scenario())


def test_a_freed_block_wakes_the_loop_only_after_an_exhausted_pass():
    from webhook.control.state import ClusterState
    from webhook.kube.assigner import Assigner

    async def scenario() -> None:
        clock, store, index, _, _ = setup("10.244.0.0/24")
        state = ClusterState(cluster_cidr=parse_cidr_list("10.244.0.0/24"), cidr_source="test", index=index)
        state.ready = True
        alloc = Allocator(parse_cidr_list("10.244.0.0/24"), index=index, store=store, clock=clock)
        loop = Assigner(None, state, lambda: alloc, enabled=lambda: True)  # type: ignore[arg-type]
        loop.wake()
        assert not state.unassigned_changed.is_set()            # nothing waits: nothing to wake
        [held] = await alloc.assign("forged")                   # the only block
        state.mark_assigned("late", False)
        state.unassigned_changed.clear()
        assert await loop.pass_once() == 0                      # exhausted
        loop.wake()
        assert state.unassigned_changed.is_set()
        assert await store.delete(store.book.get(held))         # freed: the next pass can assign it
        assert alloc.preview("late") == (held,)
    asyncio.run(scenario())


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["claim", "drop", "store", "forget"]),
                                st.integers(0, 5), st.integers(0, 7)), max_size=60))
def test_the_pending_count_kept_by_events_is_the_count_from_scratch(steps):
    """Claims made and dropped, Nodes stored (with any block) and deleted, in any order."""
    book = ClaimBook()
    index = NodeCidrIndex()
    gate = PendingClaims(book, index, lambda: POLICY)
    for what, n, c in steps:
        cidr = N(f"10.244.{c}.0/24")
        if what == "claim":
            book.put(Claim(cidr, f"node-{n}", NOW))
        elif what == "drop":
            book.drop(cidr)
        elif what == "store":
            index.set(f"node-{n}", [cidr])
        else:
            index.remove(f"node-{n}")
        scratch = [x for x in book if pending(x.cidr, x.node, index.cidrs_of)]
        assert gate.count() == len(scratch)
        assert sorted(map(str, (x.cidr for x in gate.claims()))) == sorted(str(x.cidr) for x in scratch)


def test_dual_stack_caps_each_family_on_its_own_pool_so_a_node_counts_once_in_each():
    policy = ClaimPolicy(parse_cidr_list("10.244.0.0/20,fd00::/56"))
    assert (pending_cap(policy, 4), pending_cap(policy, 6), pending_cap(policy)) == (4, 64, 4)

    async def scenario() -> None:
        clock, store, index, _, gate = setup("10.244.0.0/20,fd00::/56")
        alloc = Allocator(parse_cidr_list("10.244.0.0/20,fd00::/56"), index=index, store=store, clock=clock,
                          pending=gate)
        for i in range(4):
            assert len(await alloc.assign(f"forged-{i}")) == 2
        assert (gate.count(4), gate.count(6), gate.count()) == (4, 4, 8)
        with pytest.raises(ClaimWithheld, match="4 IPv4 claim"):
            await alloc.assign("forged-4")
    asyncio.run(scenario())


def test_a_rewritten_acquire_time_makes_no_claim_younger():
    """The acquisition is the earlier of acquireTime and the API server's creationTimestamp."""
    from webhook.kube.leases import claim_of

    def lease(created: str, acquired: str, renewed: str) -> dict:
        return {"metadata": {"name": "podcidr-v4-10-244-1-0-24", "creationTimestamp": created,
                             "annotations": {"flannel-guard.io/cidr": "10.244.1.0/24"}},
                "spec": {"holderIdentity": "n", "acquireTime": acquired, "renewTime": renewed}}

    rewritten = claim_of(lease("2026-12-01T10:00:00Z", "2026-12-06T10:00:00.5Z", "2026-12-06T10:00:00.5Z"))
    ours = claim_of(lease("2026-12-06T10:00:00Z", "2026-12-06T10:00:00.5Z", "2026-12-06T10:05:00Z"))
    assert rewritten is not None and ours is not None
    assert rewritten.acquired_at == datetime_of("2026-12-01T10:00:00Z")
    assert ours.acquired_at == datetime_of("2026-12-06T10:00:00Z")
    assert ours.since == datetime_of("2026-12-06T10:05:00Z")


def datetime_of(text: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

"""LeaseStore against a loopback API whose Lease create is exclusive (409), as the API server's."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from kube_emulator import FakeKubeApi, client_for

from webhook.control.allocator import Allocator, StoreUnavailable, lease_name
from webhook.core.claims import ClaimBook
from webhook.core.nodeindex import NodeCidrIndex
from webhook.kube.leases import LeaseStore, LeaseWatcher

N = ipaddress.ip_network
NS = "flannel-guard"


def run(coro):
    return asyncio.run(coro)


def store_for(api: FakeKubeApi, book: ClaimBook | None = None) -> LeaseStore:
    return LeaseStore(client_for(api.url), NS, book if book is not None else ClaimBook())


def test_claim_is_exclusive_and_names_the_holder():
    async def scenario():
        async with FakeKubeApi() as api:
            store = store_for(api)
            cidr = N("10.244.1.0/24")
            assert (await store.create(cidr, "a")).node == "a"
            assert (await store.create(cidr, "b")).node == "a"   # 409, then read: held by a
            assert (await store.create(cidr, "a")).node == "a"   # a retry for the same node
            lease = api.leases[(NS, lease_name(cidr))]
            assert lease["spec"]["holderIdentity"] == "a"
            assert lease["metadata"]["annotations"]["flannel-guard.io/cidr"] == "10.244.1.0/24"
            [claim] = store.book.of_node("a")
            assert claim.cidr == cidr and claim.since > 0 and claim.uid and claim.version
            assert store.book.of_node("b") == []
            assert await store.delete(claim)
            assert not await store.delete(claim)                 # 404 is fine
            assert list(store.book) == [] and api.leases == {}
    run(scenario())


def test_renew_and_delete_are_conditional_on_the_version_seen():
    """A release of an old version never deletes a claim renewed meanwhile (a node that rejoined)."""
    async def scenario():
        async with FakeKubeApi() as api:
            one, two = store_for(api), store_for(api)
            cidr = N("10.244.2.0/24")
            old = await one.create(cidr, "a")
            renewed = await two.renew(old)                      # another replica renews it
            assert renewed is not None and renewed.version != old.version
            assert not await one.delete(old)                    # 409 Precondition failed: kept
            assert (NS, lease_name(cidr)) in api.leases
            again = await one.renew(old)                        # stale version: read, renew once more
            assert again is not None and again.node == "a"
            assert not await two.delete(renewed)                # two's version is stale now too
            assert await one.delete(again)
            assert await one.renew(again) is None               # gone: 404
    run(scenario())


def test_the_watch_keeps_every_replicas_book_current():
    async def scenario():
        async with FakeKubeApi() as api:
            book = ClaimBook()
            watcher = LeaseWatcher(client_for(api.url), NS, book)
            task = asyncio.create_task(watcher.run())
            writer = store_for(api)
            first = await writer.create(N("10.244.3.0/24"), "a")
            await watcher.synced.wait()
            seen = asyncio.Event()
            book.subscribe(lambda cidr, held: seen.set())
            while book.get(first.cidr) is None:   # listed, or the next event
                seen.clear()
                await seen.wait()
            second = await writer.create(N("10.244.4.0/24"), "b")
            while book.get(second.cidr) is None:
                seen.clear()
                await seen.wait()
            assert book.get(second.cidr).node == "b"
            await writer.delete(writer.book.get(first.cidr))
            while book.get(first.cidr) is not None:
                seen.clear()
                await seen.wait()
            watcher.stop()
            await task
            assert [c.node for c in book] == ["b"]
    run(scenario())


def test_api_errors_become_store_unavailable():
    async def scenario():
        async with FakeKubeApi(lease_fail_before=1.0) as api:
            store = store_for(api)
            with pytest.raises(StoreUnavailable, match="500"):
                await store.create(N("10.244.1.0/24"), "a")
        down = store_for(api)          # the server is gone now
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await down.create(N("10.244.1.0/24"), "a")
    run(scenario())


def test_a_write_lost_halfway_is_recovered_by_the_retry():
    """The Lease was stored but the answer lost: the retry of the admission gets the same CIDR."""
    async def scenario():
        async with FakeKubeApi(lease_fail_after=1.0) as api:
            index = NodeCidrIndex()
            alloc = Allocator([N("10.244.0.0/16")], index=index, store=store_for(api))
            with pytest.raises(StoreUnavailable):
                await alloc.assign("a")
            api.lease_fail_after = 0.0
            got = await alloc.assign("a")
            assert got == (N("10.244.0.0/24"),)
            assert len(api.leases) == 1
    run(scenario())


def test_two_allocators_sharing_the_api_never_hand_out_the_same_cidr():
    async def scenario():
        async with FakeKubeApi() as api:
            one = Allocator([N("10.244.0.0/24")], index=NodeCidrIndex(), mask_v4=28,
                            store=store_for(api))
            two = Allocator([N("10.244.0.0/24")], index=NodeCidrIndex(), mask_v4=28,
                            store=store_for(api))
            results = await asyncio.gather(
                *(a.assign(f"n{i}") for i in range(16) for a in ([one] if i % 2 else [two])))
            cidrs = [c for (c,) in results]
            assert len(set(cidrs)) == 16 and len(api.leases) == 16
    run(scenario())

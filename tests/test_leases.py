"""LeaseStore against a loopback API whose Lease create is exclusive (409), as the API server's."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from kube_emulator import FakeKubeApi, client_for

from webhook.allocator import Allocator, StoreUnavailable, lease_name
from webhook.cidr import NodeCidrIndex
from webhook.leases import LeaseStore

N = ipaddress.ip_network
NS = "flannel-guard"


def run(coro):
    return asyncio.run(coro)


def test_claim_is_exclusive_and_names_the_holder():
    async def scenario():
        async with FakeKubeApi() as api:
            store = LeaseStore(client_for(api.url), NS)
            cidr = N("10.244.1.0/24")
            assert await store.claim(cidr, "a") == "a"
            assert await store.claim(cidr, "b") == "a"       # 409, then read: held by a
            assert await store.claim(cidr, "a") == "a"       # a retry for the same node
            lease = api.leases[(NS, lease_name(cidr))]
            assert lease["spec"]["holderIdentity"] == "a"
            assert lease["metadata"]["annotations"]["flannel-guard.io/cidr"] == "10.244.1.0/24"
            assert await store.of_node("a") == [cidr] and await store.of_node("b") == []
            [r] = await store.all()
            assert r.node == "a" and r.created > 0
            await store.release(cidr)
            await store.release(cidr)                        # 404 is fine
            assert await store.all() == []
    run(scenario())


def test_api_errors_become_store_unavailable():
    async def scenario():
        async with FakeKubeApi(lease_fail_before=1.0) as api:
            store = LeaseStore(client_for(api.url), NS)
            with pytest.raises(StoreUnavailable, match="500"):
                await store.claim(N("10.244.1.0/24"), "a")
        down = LeaseStore(client_for(api.url), NS)          # the server is gone now
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await down.claim(N("10.244.1.0/24"), "a")
    run(scenario())


def test_a_write_lost_halfway_is_recovered_by_the_retry():
    """The Lease was stored but the answer lost: the retry of the admission gets the same CIDR."""
    async def scenario():
        async with FakeKubeApi(lease_fail_after=1.0) as api:
            index = NodeCidrIndex()
            alloc = Allocator([N("10.244.0.0/16")], index=index, store=LeaseStore(client_for(api.url), NS))
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
                            store=LeaseStore(client_for(api.url), NS))
            two = Allocator([N("10.244.0.0/24")], index=NodeCidrIndex(), mask_v4=28,
                            store=LeaseStore(client_for(api.url), NS))
            results = await asyncio.gather(
                *(a.assign(f"n{i}") for i in range(16) for a in ([one] if i % 2 else [two])))
            cidrs = [c for (c,) in results]
            assert len(set(cidrs)) == 16 and len(api.leases) == 16
    run(scenario())

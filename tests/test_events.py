"""Events on Nodes, aggregated as client-go's EventCorrelator does (tools/record/events_cache.go)."""

from __future__ import annotations

import asyncio

from kube_emulator import FakeKubeApi, client_for

from webhook.kube.events import BURST, GLOBAL_BURST, GLOBAL_PER_SECOND, MAX_IN_FLIGHT, EventRecorder


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_repeats_become_a_count_on_one_event_and_a_flood_is_held_back():
    async def scenario() -> None:
        async with FakeKubeApi() as api:
            clock = Clock()
            rec = EventRecorder(client_for(api.url), "replica-a", clock=clock)
            for _ in range(3):
                rec.warning("worker-1", "CIDRNotAvailable", "Node worker-1 status is now: CIDRNotAvailable")
                await rec.flush()
                clock.now += 1
            [event] = api.events.values()
            assert event["count"] == 3 and event["type"] == "Warning"
            assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "worker-1",
                                               "uid": "worker-1"}
            assert event["metadata"]["namespace"] == "default"
            assert event["source"] == {"component": "flannel-guard"}
            assert event["firstTimestamp"] < event["lastTimestamp"]
            # Another reason is another Event; past ten minutes the same one starts anew.
            rec.normal("worker-1", "PodCIDRAssigned", "flannel-guard assigned podCIDR 10.244.1.0/24")
            clock.now += 601
            rec.warning("worker-1", "CIDRNotAvailable", "Node worker-1 status is now: CIDRNotAvailable")
            await rec.flush()
            assert len(api.events) == 3
            # A flood on one node: at most BURST writes, then one per refill period.
            for i in range(3 * BURST):
                rec.warning("worker-2", "PodCIDRClaimRefused", f"attempt {i}")
            await rec.flush()
            on_two = [e for e in api.events.values() if e["involvedObject"]["name"] == "worker-2"]
            assert len(on_two) == BURST and rec.dropped == 2 * BURST
    asyncio.run(scenario())


def test_a_failing_api_never_breaks_the_caller():
    async def scenario() -> None:
        async with FakeKubeApi() as api:
            url = api.url
        rec = EventRecorder(client_for(url), "replica-a")  # nothing listens there any more
        rec.warning("worker-1", "CIDRNotAvailable", "x")
        await rec.flush()
        assert rec.written == 0
    asyncio.run(scenario())


def test_forged_node_names_cannot_make_the_replica_write_unbounded_events():
    """Issue 15 (found by the soak): each forged Node name cost one Event write to the API, since
    the spam filter is per node. Across all nodes a replica writes GLOBAL_BURST, then
    GLOBAL_PER_SECOND a second; and never more than MAX_IN_FLIGHT writes wait on the API."""
    async def scenario() -> None:
        async with FakeKubeApi() as api:
            clock = Clock()
            rec = EventRecorder(client_for(api.url), "replica-a", clock=clock)
            names = [f"forged-{i}" for i in range(4 * GLOBAL_BURST)]
            for start in range(0, len(names), MAX_IN_FLIGHT):
                for name in names[start:start + MAX_IN_FLIGHT]:
                    rec.warning(name, "CIDRNotAvailable", "no free podCIDR")
                await rec.flush()
            assert len(api.events) == GLOBAL_BURST == rec.written
            assert rec.dropped == len(names) - GLOBAL_BURST
            clock.now += 10  # the bucket refills at GLOBAL_PER_SECOND
            for start in range(0, len(names), MAX_IN_FLIGHT):
                for name in names[start:start + MAX_IN_FLIGHT]:
                    rec.warning(name + "-again", "CIDRNotAvailable", "no free podCIDR")
                await rec.flush()
            assert rec.written == GLOBAL_BURST + int(10 * GLOBAL_PER_SECOND)
            # More at once than MAX_IN_FLIGHT: the rest are dropped, not queued.
            before = rec.dropped
            for i in range(MAX_IN_FLIGHT + 5):
                rec.warning(f"burst-{i}", "CIDRNotAvailable", "x")
            assert rec.dropped == before + 5
            await rec.flush()
    asyncio.run(scenario())

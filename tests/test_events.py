"""Events on Nodes, aggregated as client-go's EventCorrelator does (tools/record/events_cache.go)."""

from __future__ import annotations

import asyncio

from kube_emulator import FakeKubeApi, client_for

from webhook.kube.events import BURST, EventRecorder


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

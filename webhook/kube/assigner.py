"""Every Node gets a podCIDR: the loop that patches Nodes stored without one.

Nodes that register while no replica answers ``/mutate`` (``failurePolicy:
Ignore``, a rollout, a bad certificate), or that were admitted without one while
the range was exhausted, are stored without a podCIDR, and flannel on them
fails with ``pod cidr not assigned``. While flannel-guard is the allocator
(kube-controller-manager does not allocate), the replica that leads
(:class:`~webhook.kube.leader.LeaderElector`) finds them in the node index and gives
each a free CIDR, claimed as admission claims (:class:`~webhook.control.allocator.Allocator`),
with a merge patch of ``spec.podCIDR(s)``, as kube-controller-manager's range
allocator does (``pkg/controller/nodeipam/ipam/range_allocator.go``).

Leadership only avoids duplicate work: safety comes from the claims. Two leaders
for a moment (a lost renewal) still never give one CIDR twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from urllib.parse import quote

import kubernetes.client
import structlog
import urllib3
from kubernetes.client.exceptions import ApiException

from webhook.control.allocator import Allocator, ClaimWithheld, RangeExhaustedError, StoreUnavailable
from webhook.control.state import ClusterState
from webhook.kube.events import EventRecorder
from webhook.kube.raw import raw_request

__all__ = ["Assigner"]

log = structlog.get_logger("flannel_guard.assigner")


class Assigner:
    """Patches stored Nodes without a podCIDR while ``leading`` is set and ``enabled()`` holds."""

    def __init__(self, api: kubernetes.client.ApiClient, state: ClusterState,
                 allocator: Callable[[], Allocator | None], *, enabled: Callable[[], bool],
                 events: EventRecorder | None = None, batch: int = 100, interval: float = 10.0,
                 parallel: int = 16) -> None:
        self._api = api
        self._state = state
        self._allocator = allocator
        self._enabled = enabled
        self._events = events
        self._batch = batch
        self._interval = interval
        # Nodes claimed and patched at once: each is two API round trips, and a storm of 1,000
        # Nodes stored while no replica answered waits for them (bench/storm.py, issue 26).
        self._parallel = max(1, parallel)
        self.assigned = 0
        self.passes = 0
        # Set when a block may have become free while a pass found the range exhausted.
        self._exhausted = False

    def wake(self) -> None:
        """A block was set free: after an exhausted pass, run the next one now, not at ``interval``."""
        if self._exhausted and self._state.unassigned:
            self._exhausted = False
            self._state.unassigned_changed.set()

    async def run(self, leading: asyncio.Event) -> None:
        """Until cancelled: while leading, a pass at every new unassigned Node (or each ``interval``)."""
        while True:
            await leading.wait()
            self._state.unassigned_changed.clear()
            try:
                if await self.pass_once(leading) and self._state.unassigned:
                    continue  # a batch done and more waiting: the next one now, not at ``interval``
            except Exception:
                log.exception("assigning pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._state.unassigned_changed.wait(), self._interval)

    async def pass_once(self, leading: asyncio.Event | None = None) -> int:
        """Give up to ``batch`` unassigned Nodes a podCIDR; return how many were patched."""
        self.passes += 1
        allocator = self._allocator()
        if allocator is None or not self._enabled() or not self._state.ready:
            return 0
        done = 0
        names = sorted(self._state.unassigned)[: self._batch]
        for start in range(0, len(names), self._parallel):
            if leading is not None and not leading.is_set():
                break
            results = await asyncio.gather(*(self._assign_one(allocator, name)
                                             for name in names[start:start + self._parallel]))
            done += sum(r is True for r in results)
            if any(r is None for r in results):
                break  # the range is exhausted or the API does not take writes: the next pass
        self.assigned += done
        return done

    async def _assign_one(self, allocator: Allocator, name: str) -> bool | None:
        """Claim and patch one Node: True when patched, False to skip it, None to end the pass."""
        try:
            cidrs = await allocator.assign(name)
        except RangeExhaustedError as e:
            # Not the end of the loop: the next freed block (wake) starts another pass.
            self._exhausted = True
            if self._events is not None:
                self._events.warning(name, "CIDRNotAvailable",
                                     f"Node {name} status is now: CIDRNotAvailable ({e})")
            return None
        except StoreUnavailable as e:
            log.warning("podCIDR not claimed; next pass retries", node=name[:253], error=str(e)[:200])
            return None
        except ClaimWithheld as e:
            log.info("podCIDR not claimed now; next pass retries", node=name[:253], error=str(e)[:200])
            return False
        if not await self._patch(name, [str(c) for c in cidrs]):
            return False
        self._state.mark_assigned(name, True)
        if self._events is not None:
            self._events.normal(name, "PodCIDRAssigned",
                                f"flannel-guard assigned podCIDR {','.join(map(str, cidrs))}"
                                f" to node {name} (the node had none)")
        return True

    async def _patch(self, name: str, cidrs: list[str]) -> bool:
        body = {"spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}}
        try:
            await asyncio.to_thread(raw_request, self._api, "patch_node", f"/api/v1/nodes/{quote(name)}",
                                    body=body, content_type="application/merge-patch+json",
                                    timeout=(5.0, 10.0))
        except ApiException as e:
            # 404: the node is gone (its claims are released with it); 422/403/409: another
            # writer set it meanwhile, or a webhook refused: the watch shows what it has now.
            log.info("node not patched", node=name[:253], status=e.status, reason=(e.reason or "")[:80])
            return False
        except (urllib3.exceptions.HTTPError, OSError) as e:
            log.warning("node not patched", node=name[:253], error=f"{type(e).__name__}: {e}"[:200])
            return False
        log.info("podCIDR assigned", node=name[:253], pod_cidrs=cidrs)
        return True

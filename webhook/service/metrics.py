"""Prometheus metrics of one app: counters, the latency histogram, and gauges read at scrape time.

Each app has its own registry (tests build many apps). The gauges of the cluster state and
of the podCIDR pool are a custom collector: computed when Prometheus scrapes, never kept.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from webhook import __version__
from webhook.control.allocator import OUTCOMES as MUTATE_CLAIM_OUTCOMES
from webhook.control.state import ClusterState
from webhook.core.cidr import IPNetwork
from webhook.core.claimpolicy import REASONS

__all__ = ["MUTATE_CLAIM_OUTCOMES", "Metrics", "pool_blocks"]

# No `_created` twin of every counter and histogram (prometheus_client's default): a creation time per
# series that rate() never reads (it sees resets itself), doubling the series Prometheus stores.
disable_created_metrics()


class Metrics:
    """Prometheus metrics of one app (its own registry, so tests can build many apps).

    Counters and the latency histogram are updated per request; what describes the
    process's knowledge (the node block pool, readiness, the cluster-cidr sources'
    agreement, the API's last word) is read at scrape time by :class:`_StateCollector`
    once :meth:`observe` has been given the state.
    """

    #: Up to 10 s: past the webhooks' 5 s timeoutSeconds, so a slow answer the API server
    #: gave up on is still told apart from one that made it.
    LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                       1.0, 2.5, 5.0, 10.0)

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "flannel_guard_admission_requests",
            "Admission reviews answered, by kind, operation and verdict.",
            ["webhook", "kind", "operation", "verdict"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "flannel_guard_admission_duration_seconds",
            "Time to answer one admission review.",
            ["webhook", "kind"],
            buckets=self.LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.bad_requests = Counter(
            "flannel_guard_bad_requests",
            "Requests refused with HTTP 4xx before review, by status.",
            ["status"],
            registry=self.registry,
        )
        self.claims = Counter(
            "flannel_guard_claims",
            "PodCIDR claims of validated Node writes, by outcome (claimed, known, dry-run,"
            " conflict, unavailable).",
            ["outcome"],
            registry=self.registry,
        )
        self.mutate_claims = Counter(
            "flannel_guard_mutate_claims",
            "PodCIDR claims of /mutate (a Node registering without one), by outcome: claimed (a"
            " new claim won), renewed (the node's claim made earlier, a retried admission), lost"
            " (the Lease create lost a race to another node's claim; another block is tried),"
            " unavailable (the API did not take the write).",
            ["outcome"],
            registry=self.registry,
        )
        # Every outcome exported from the start, so that a rate over them is defined at 0.
        self._mutate_claims = {o: self.mutate_claims.labels(o) for o in MUTATE_CLAIM_OUTCOMES}
        self.internal_errors = Counter(
            "flannel_guard_internal_errors",
            "Reviews that raised inside flannel-guard (answered by failure stance).",
            ["webhook"],
            registry=self.registry,
        )
        self.build_info = Gauge(
            "flannel_guard_build_info",
            "Always 1; the labels say which flannel-guard and Python serve.",
            ["version", "python_version"],
            registry=self.registry,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self._state_collector: _StateCollector | None = None
        # The children of the per-request metrics, by label values (a closed set: 2 webhooks,
        # 3 kinds, 4 operations, 3 verdicts): a label lookup takes a lock and builds a tuple.
        self._answered: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}

    def mutate_claim(self, outcome: str) -> None:
        """Count one claim of /mutate (``outcome``: one of :data:`MUTATE_CLAIM_OUTCOMES`)."""
        child = self._mutate_claims.get(outcome)
        if child is not None:
            child.inc()

    def answered(self, webhook: str, kind: str, operation: str, verdict: str, seconds: float) -> None:
        """Count one answered review and observe its latency (``kind``: already a closed label)."""
        key = (webhook, kind, operation, verdict)
        children = self._answered.get(key)
        if children is None:
            children = self._answered[key] = (self.requests.labels(*key),
                                              self.latency.labels(webhook, kind))
        children[0].inc()
        children[1].observe(seconds)

    def observe(self, state: ClusterState, allocator: Callable[[], object | None],
                pending: Any = None) -> None:
        """Export ``state``, the pool of ``allocator()`` and the claims of ``pending`` (a
        :class:`~webhook.control.pending.PendingClaims`), read at each scrape, from now on."""
        if self._state_collector is None:
            self._state_collector = _StateCollector(state, allocator, pending)
            self.registry.register(self._state_collector)


def pool_blocks(cidr_set: Any, nodes: Iterable[IPNetwork]) -> tuple[int, int, int]:
    """``(used, reserved, free)`` node blocks of one CidrSet: pure, over its counters.

    ``used``: blocks a Node's podCIDR covers (each block counted once, however many
    nodes overlap it); ``reserved``: blocks the set holds that no Node covers yet
    (reservations of the mutating webhook); ``free``: the rest, what can still be
    handed out. They add up to the set's capacity.
    """
    cluster, mask = cidr_set.cluster, cidr_set.mask
    base, shift = int(cluster.network_address), cluster.max_prefixlen - mask
    last = int(cluster.broadcast_address)
    spans: list[tuple[int, int]] = []
    for net in nodes:
        if net.version != cluster.version or not net.overlaps(cluster):
            continue
        first = (max(int(net.network_address), base) - base) >> shift
        end = (min(int(net.broadcast_address), last) - base) >> shift
        spans.append((first, end))
    used = 0
    reach = -1
    for first, end in sorted(spans):
        if end > reach:
            used += end - max(first, reach + 1) + 1
            reach = end
    capacity, free = cidr_set.capacity, cidr_set.free
    used = min(used, capacity - free)
    return used, capacity - free - used, free


class _StateCollector(Collector):
    """Gauges read from the serving state when Prometheus scrapes (no bookkeeping per request)."""

    def __init__(self, state: ClusterState, allocator: Callable[[], object | None],
                 pending: Any = None) -> None:
        self._state = state
        self._allocator = allocator
        self._pending = pending

    def describe(self) -> list[Metric]:
        return []  # read at scrape time: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        state = self._state
        yield GaugeMetricFamily("flannel_guard_ready",
                                "1 once the node index is loaded and until shutdown begins.",
                                value=1 if state.ready and not state.stopping else 0)
        yield GaugeMetricFamily(
            "flannel_guard_cluster_cidr_sources_disagree",
            "1 while the cluster-cidr sources (flag, kube-controller-manager, kubeadm-config,"
            " kube-proxy) name different ranges.", value=1 if state.disputed else 0)
        if state.last_sync is not None:
            # On the wall clock, as Prometheus compares it with time().
            wall = time.time() - (time.monotonic() - state.last_sync)
            yield GaugeMetricFamily(
                "flannel_guard_api_last_sync_timestamp_seconds",
                "Unix time of the last confirmation of the node index by the Kubernetes API.",
                value=wall)
        if self._pending is not None:
            yield from _claim_metrics(self._pending)
        sets = getattr(self._allocator(), "sets", None) or ()
        if not sets:
            return
        capacity = GaugeMetricFamily(
            "flannel_guard_pool_capacity_blocks",
            "Node podCIDR blocks the cluster-cidr holds at the node mask size.",
            labels=["cluster_cidr", "mask"])
        blocks = GaugeMetricFamily(
            "flannel_guard_pool_blocks",
            "Node podCIDR blocks of the cluster-cidr by state: used by a Node, reserved for a"
            " Node not seen yet, free.", labels=["cluster_cidr", "state"])
        nodes = [net for _, cidrs in state.index.nodes() for net in cidrs]
        for cidr_set in sets:
            name = str(cidr_set.cluster)
            capacity.add_metric([name, str(cidr_set.mask)], cidr_set.capacity)
            used, reserved, free = pool_blocks(cidr_set, nodes)
            blocks.add_metric([name, "used"], used)
            blocks.add_metric([name, "reserved"], reserved)
            blocks.add_metric([name, "free"], free)
        yield capacity
        yield blocks


def _claim_metrics(pending: Any) -> Iterator[Metric]:
    """Claims waiting for their Node, the cap, claims withheld at it, and claims not trusted (issue 28)."""
    waiting = GaugeMetricFamily("flannel_guard_pending_claims",
                                "PodCIDR claims whose holder does not hold that CIDR in the node index (a"
                                " Node not stored yet, or stored with another podCIDR), by IP family.",
                                labels=["family"])
    cap = GaugeMetricFamily("flannel_guard_pending_claims_cap",
                            "At most this many pending claims per IP family: min(64, a quarter of the"
                            " family's pool).", labels=["family"])
    families = sorted({n.version for n in pending.policy().cluster_cidr or ()} or {4})
    for v in families:
        waiting.add_metric([str(v)], pending.count(v))
        cap.add_metric([str(v)], pending.cap(v))
    yield waiting
    yield cap
    yield CounterMetricFamily("flannel_guard_pending_claims_refused",
                              "New claims withheld because the pending cap was reached (the write was"
                              " judged, or the Node admitted, without a claim).", value=pending.refused)
    untrusted = GaugeMetricFamily("flannel_guard_claims_untrusted",
                                  "Leases labelled as podCIDR claims that are not believed, by reason:"
                                  " name (not the Lease name of its CIDR), mask, outside (the cluster-cidr),"
                                  " future (a time ahead of the clock).", labels=["reason"])
    counts = dict.fromkeys(REASONS, 0)
    for entry in list(pending.book.untrusted.values()):
        counts[entry.reason] = counts.get(entry.reason, 0) + 1
    for reason, count in counts.items():
        untrusted.add_metric([reason], count)
    yield untrusted

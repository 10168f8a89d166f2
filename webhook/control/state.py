"""What the serving process knows of the cluster, shared by the handlers.

In ``--standalone`` mode (a demo and test mode, no Kubernetes API) the
cluster-cidr comes from ``--cluster-cidr`` and the node index holds the Nodes
this process itself admitted. With a live API, :mod:`webhook.kube.cluster` keeps
the same object current from a list and a watch.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from webhook.core.cidr import IPNetwork
from webhook.core.nodeindex import NodeCidrIndex
from webhook.core.nodemodel import node_model
from webhook.core.rules import ClusterView

__all__ = ["ClusterState"]


@dataclass
class ClusterState:
    """Mutable cluster knowledge; :meth:`view` hands the rules a consistent read-only view."""

    cluster_cidr: tuple[IPNetwork, ...] | None
    cidr_source: str
    mask_v4: int = 24
    mask_v6: int = 64
    notes: tuple[str, ...] = ()
    disputed: bool = False
    flannel_defines: bool = False
    defined_by: str | None = None
    # kube-controller-manager runs with --allocate-node-cidrs=true (then it assigns, not the loop).
    kcm_allocates: bool = False
    # --service-cluster-ip-range: node blocks overlapping it are never handed out.
    service_ranges: tuple[IPNetwork, ...] = ()
    index: NodeCidrIndex = field(default_factory=NodeCidrIndex)
    ready: bool = False
    # A stop signal arrived: /readyz answers 503 so that the Service stops routing here, while
    # reviews are still answered as before through --shutdown-delay. Apart from ``ready``, which
    # every sync of the node watch sets again (readiness must not come back mid-shutdown).
    stopping: bool = False
    # The claims (reservation Leases) have been listed once (always true in standalone mode).
    claims_ready: bool = True
    # Monotonic time of the last confirmation from the API (None: never / standalone).
    last_sync: float | None = None
    # The same moment on the wall clock (claims carry wall-clock times).
    last_sync_wall: float | None = None
    _view: ClusterView | None = field(default=None, repr=False)
    # Stored Nodes without any podCIDR (live mode), and an event set when one appears.
    unassigned: set[str] = field(default_factory=set)
    unassigned_changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # Recently deleted nodes and the podCIDRs they had, newest last (bounded).
    departed: OrderedDict[str, tuple[IPNetwork, ...]] = field(default_factory=OrderedDict, repr=False)

    DEPARTED_MAX = 4096

    def __post_init__(self) -> None:
        self.index.subscribe(self._remember_departed)

    def _remember_departed(self, node: str, removed: tuple[IPNetwork, ...],
                           added: tuple[IPNetwork, ...]) -> None:
        if removed and not added:
            self.departed[node] = removed
            self.departed.move_to_end(node)
            while len(self.departed) > self.DEPARTED_MAX:
                self.departed.popitem(last=False)

    def view(self) -> ClusterView:
        """The view the rules read. Built once per change of the cluster-cidr facts, not per request."""
        if self._view is None:
            self._view = ClusterView(
                cluster_cidr=self.cluster_cidr,
                cidr_source=self.cidr_source,
                nodes=self.index,
                mask_v4=self.mask_v4,
                mask_v6=self.mask_v6,
                notes=self.notes,
                disputed=self.disputed,
                departed=self.departed,
                flannel_defines=self.flannel_defines,
                defined_by=self.defined_by,
            )
        return self._view

    def set_cidr(self, cidr: tuple[IPNetwork, ...] | None, source: str,
                 notes: tuple[str, ...] = (), *, disputed: bool = False,
                 flannel_defines: bool = False, defined_by: str | None = None) -> None:
        self.cluster_cidr, self.cidr_source, self.notes = cidr, source, notes
        self.disputed = disputed
        self.flannel_defines, self.defined_by = flannel_defines, defined_by
        self._view = None

    def record_node(self, obj: dict[str, object] | None) -> None:
        """Index a Node's podCIDRs (:func:`webhook.core.nodemodel.node_model`: those that parse)."""
        model = node_model(obj)  # type: ignore[arg-type]
        if model is not None:
            self.index.set(model.name, model.networks)

    def forget_node(self, name: str) -> None:
        self.index.remove(name)

    def outside_note(self) -> str | None:
        """Nodes whose podCIDRs lie outside the cluster-cidr (it changed): they keep them.

        A set podCIDR never changes (the API server refuses it), so nothing reassigns them;
        this says so on every response until the range or the nodes are put right.
        """
        if not self.cluster_cidr or not len(self.index):
            return None
        count, sample = self.index.outside(self.cluster_cidr, limit=2)
        if not count:
            return None
        named = ", ".join(f"{n[:60]} ({c})" for n, c in sample)
        cidr = ",".join(map(str, self.cluster_cidr))
        # Cause before cure (issue 24): when the range changed by mistake, the nodes are right.
        return (f"{count} node podCIDR(s) outside the cluster-cidr {cidr}, e.g. {named}; if the"
                " cluster-cidr changed by mistake, set it back (flannel-guard doctor names the source),"
                " else drain and re-register those nodes")[:300]

    def set_unassigned(self, names: set[str]) -> None:
        self.unassigned = names
        if names:
            self.unassigned_changed.set()

    def mark_assigned(self, name: str, assigned: bool) -> None:
        """A Node with (True) or without (False) a podCIDR, or gone (True)."""
        if assigned:
            self.unassigned.discard(name)
        elif name not in self.unassigned:
            self.unassigned.add(name)
            self.unassigned_changed.set()

    def mark_synced(self) -> None:
        self.last_sync = time.monotonic()
        self.last_sync_wall = time.time()
        self.ready = True

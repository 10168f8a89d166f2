"""A realistic mix of Node writes over a cluster's life, as the API server receives them. Pure, seeded.

:func:`node_writes` returns exactly ``n`` writes (default 1,000) of a kubeadm + flannel cluster:
ten nodes join (three control-plane), then rounds follow until ``n`` writes are made; every
other round, from the first, is a maintenance round (a drain and reboot of each node, as an
upgrade does); in every round one node leaves and one or two join. Who writes what, in which
order and through which resource, is taken from the components themselves (below); how often
the optional things happen (the ``P_*`` constants, the status down-sampling, the round
pattern) are this mix's assumptions, stated where they are defined:

* **Heartbeats are not Node writes.** Since node leases (KEP-589, GA in 1.17) kubelet renews
  a Lease in ``kube-node-lease`` every 10 s; it writes the Node's status only when it changed,
  or every ``nodeStatusReportFrequency`` (5 min by default) otherwise. Leases are not in this mix.
* **Status goes to the ``nodes/status`` subresource** (kind ``status``): kubelet's
  ``PatchNodeStatus`` (``pkg/kubelet/kubelet_node_status.go``, ``pkg/util/node``), and the node
  lifecycle controller's Unknown condition when a kubelet stops reporting. The webhooks' rules
  name ``nodes``, which does not match ``nodes/status`` (``apiserver/.../predicates/rules/
  rules.go``): the API server never sends these, with or without matchConditions. In a real
  cluster they are the great majority of Node writes (288 a node a day of periodic reports
  alone); here they are down-sampled to :data:`STATUS_REPORTS_PER_ROUND` a node a round, so
  that the other kinds are visible. Their share changes no call count.
* **Registration** (``register``): kubelet's CREATE (``tryRegisterWithAPIServer``), with its
  well-known labels and no podCIDR (kubelet's ``--pod-cidr`` is not written to the Node);
  control-plane nodes carry kubeadm's ``node-role.kubernetes.io/control-plane:NoSchedule``
  taint (``--register-with-taints``).
* **podCIDR set once** (``pod-cidr``): with ``allocator="kube-controller-manager"`` its range
  allocator patches ``spec.podCIDR``/``spec.podCIDRs`` on ``nodes`` (not status)
  (``component-helpers/node/util/cidr.go`` ``PatchNodeCIDRs``), racing the TTL controller
  after the CREATE. With ``allocator="flannel-guard"`` the mutating webhook sets them inside the
  CREATE itself (``Write.admitted``), and there is no later write.
* **flannel's annotations** (``flannel-annotations``): ``flannel.alpha.coreos.com/backend-data``,
  ``backend-type``, ``kube-subnet-manager``, ``public-ip``, patched by flannel's kube subnet
  manager at start (``pkg/subnet/kube/kube.go`` ``AcquireLease``) *through the status
  subresource* (``Patch(..., "status")``), so also never sent to the webhooks. On a restart
  flannel patches only if a value differs (the VXLAN MAC is read back from the annotation,
  ``pkg/backend/vxlan/vxlan.go``): here when the node's address changed on a reboot
  (:data:`P_ADDRESS_CHANGES`).
* **A flannel annotation set by an operator** (``flannel-annotation-operator``):
  ``flannel.alpha.coreos.com/public-ip-overwrite`` with ``kubectl annotate node`` (flannel
  ``Documentation/kubernetes.md``), on ``nodes``: this one is sent (:data:`P_PUBLIC_IP_OVERWRITE`).
* **Other annotations** (``annotation``): kube-controller-manager's TTL controller sets
  ``node.alpha.kubernetes.io/ttl`` on ``nodes`` once per node (``pkg/controller/ttl``).
* **Labels** (``label``): operators and cluster tools (``kubectl label node``: roles, pools),
  at join and now and then.
* **Taints** (``taint``): the node lifecycle controller's ``node.kubernetes.io/not-ready``
  (NoSchedule while a node is not Ready), ``unreachable`` (NoExecute while its kubelet is silent)
  and ``unschedulable`` (while cordoned) (``pkg/controller/nodelifecycle``, patches of
  ``spec.taints`` on ``nodes``).
* **Cordon** (``cordon``): ``kubectl cordon``/``uncordon`` (``spec.unschedulable``) around a drain.
* **DELETE** (``delete``): a node leaving; neither Node webhook lists DELETE.

A PATCH is admitted as an UPDATE with the whole object before and after, as here.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

KINDS = ("register", "pod-cidr", "flannel-annotations", "flannel-annotation-operator", "annotation",
         "label", "taint", "cordon", "status", "delete")
ALLOCATORS = ("kube-controller-manager", "flannel-guard")

FLANNEL = "flannel.alpha.coreos.com/"
STATUS_REPORTS_PER_ROUND = 4
"""Periodic status reports per node per round (down-sampled: the real rate is one every 5 min)."""
P_ADDRESS_CHANGES = 0.05
"""A reboot that gives the node another address (DHCP): flannel's restart then writes public-ip."""
P_LABEL = 0.3
"""A node's labels changed by an operator or a cluster tool in a round."""
P_PUBLIC_IP_OVERWRITE = 0.1
"""A joining node whose public address is not its own (behind NAT): the operator sets flannel's
public-ip-overwrite, and restarts flannel on it, which then publishes that address."""


@dataclass(frozen=True)
class Write:
    """One Node write as the API server receives it."""

    kind: str                  # one of KINDS
    writer: str                # the component or person making it
    operation: str             # CREATE, UPDATE (a PATCH too) or DELETE
    subresource: str           # "" (nodes) or "status" (nodes/status)
    object: Obj | None         # as sent (null on DELETE)
    old_object: Obj | None     # as stored before (null on CREATE)
    admitted: Obj | None = None  # the object after mutating admission, when a webhook changed it

    @property
    def validated(self) -> Obj | None:
        """The object the validating webhooks see (mutating webhooks run first)."""
        return self.admitted if self.admitted is not None else self.object


def _cidr(i: int) -> str:
    return f"10.244.{i}.0/24"


def _conditions(ready: str, reason: str) -> list[Obj]:
    return [{"type": t, "status": "False", "reason": f"KubeletHasSufficient{t[:-8]}"}
            for t in ("MemoryPressure", "DiskPressure", "PIDPressure")] + [
        {"type": "Ready", "status": ready, "reason": reason}]


class _Cluster:
    def __init__(self, rng: random.Random, allocator: str) -> None:
        self.rng = rng
        self.allocator = allocator
        self.nodes: dict[str, Obj] = {}
        self.index = 0
        self.writes: list[Write] = []

    def _emit(self, kind: str, writer: str, name: str, change: Callable[[Obj], None],
              subresource: str = "") -> None:
        old = self.nodes[name]
        new = copy.deepcopy(old)
        change(new)
        new["metadata"]["resourceVersion"] = str(int(old["metadata"]["resourceVersion"]) + 1)
        self.writes.append(Write(kind, writer, "UPDATE", subresource, new, old))
        self.nodes[name] = new

    def _status(self, name: str, ready: str, reason: str, writer: str = "kubelet") -> None:
        def change(n: Obj) -> None:
            n["status"]["conditions"] = _conditions(ready, reason)
        self._emit("status", writer, name, change, "status")

    def _taint(self, name: str, key: str, effect: str, add: bool) -> None:
        def change(n: Obj) -> None:
            taints = [t for t in n["spec"].get("taints", []) if t["key"] != key]
            if add:
                taints.append({"key": key, "effect": effect})
            if taints:
                n["spec"]["taints"] = taints
            else:
                n["spec"].pop("taints", None)
        self._emit("taint", "kube-controller-manager (node lifecycle)", name, change)

    def _label(self, name: str, key: str, value: str, writer: str = "operator") -> None:
        def change(n: Obj) -> None:
            n["metadata"]["labels"][key] = value
        self._emit("label", writer, name, change)

    def _flannel_start(self, name: str, ip: str) -> None:
        wanted = {FLANNEL + "backend-data": json.dumps({"VNI": 1, "VtepMAC": self._mac(name)}),
                  FLANNEL + "backend-type": "vxlan", FLANNEL + "kube-subnet-manager": "true",
                  FLANNEL + "public-ip": ip}
        annotations = self.nodes[name]["metadata"].get("annotations", {})
        if all(annotations.get(k) == v for k, v in wanted.items()):
            return  # AcquireLease patches only when a value differs

        def change(n: Obj) -> None:
            n["metadata"].setdefault("annotations", {}).update(wanted)
        self._emit("flannel-annotations", "flannel", name, change, "status")

    def _mac(self, name: str) -> str:
        digest = sum(name.encode()) & 255
        return f"6a:5b:4c:3d:2e:{digest:02x}"

    def join(self, control_plane: bool = False) -> None:
        i = self.index
        self.index += 1
        name = f"{'cp' if control_plane else 'worker'}-{i:03d}"
        labels = {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
        spec: Obj = {}
        if control_plane:
            labels["node-role.kubernetes.io/control-plane"] = ""
            spec["taints"] = [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
        obj: Obj = {"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "uid": f"00000000-0000-0000-0000-{i:012d}",
                                 "resourceVersion": str(1000 * (i + 1)), "labels": labels,
                                 "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach":
                                                 "true"}},
                    "spec": spec, "status": {"conditions": _conditions("False", "KubeletNotReady")}}
        admitted = None
        if self.allocator == "flannel-guard":  # /mutate gives the CREATE its podCIDR
            admitted = copy.deepcopy(obj)
            admitted["spec"].update(podCIDR=_cidr(i), podCIDRs=[_cidr(i)])
        self.writes.append(Write("register", "kubelet", "CREATE", "", obj, None, admitted))
        self.nodes[name] = copy.deepcopy(admitted or obj)
        self._status(name, "False", "KubeletNotReady")  # container runtime network not ready

        def pod_cidr(n: Obj) -> None:
            n["spec"].update(podCIDR=_cidr(i), podCIDRs=[_cidr(i)])

        def ttl(n: Obj) -> None:
            n["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"] = "0"

        # kube-controller-manager's range allocator and TTL controller both react to the new Node.
        reactions: list[tuple[str, Callable[[Obj], None]]] = [("annotation", ttl)]
        if self.allocator == "kube-controller-manager":
            reactions.append(("pod-cidr", pod_cidr))
        self.rng.shuffle(reactions)
        for kind, change in reactions:
            self._emit(kind, "kube-controller-manager", name, change)
        self._taint(name, "node.kubernetes.io/not-ready", "NoSchedule", add=True)
        self._flannel_start(name, f"192.168.0.{i % 250 + 1}")
        self._status(name, "True", "KubeletReady")
        self._taint(name, "node.kubernetes.io/not-ready", "NoSchedule", add=False)
        if self.rng.random() < P_PUBLIC_IP_OVERWRITE:
            public = f"203.0.113.{i % 250 + 1}"

            def overwrite(n: Obj) -> None:
                n["metadata"]["annotations"][FLANNEL + "public-ip-overwrite"] = public
            self._emit("flannel-annotation-operator", "operator (kubectl annotate)", name, overwrite)
            self._flannel_start(name, public)
        if not control_plane:
            self._label(name, "node-role.kubernetes.io/worker", "")
            if self.rng.random() < 0.5:
                self._label(name, "node.example.com/pool", self.rng.choice(["general", "batch"]),
                            writer="cluster tool")

    def leave(self) -> None:
        workers = sorted(n for n in self.nodes if n.startswith("worker-"))
        if len(workers) <= 3:
            return
        name = self.rng.choice(workers)
        old = self.nodes.pop(name)
        self.writes.append(Write("delete", "cluster autoscaler", "DELETE", "", None, old))

    def maintain(self, name: str) -> None:
        """A drain and reboot (an upgrade): cordon, kubelet silent, back Ready, uncordon."""
        def cordon(flag: bool) -> Callable[[Obj], None]:
            def change(n: Obj) -> None:
                if flag:
                    n["spec"]["unschedulable"] = True
                else:
                    n["spec"].pop("unschedulable", None)
            return change

        self._emit("cordon", "operator (kubectl drain)", name, cordon(True))
        self._taint(name, "node.kubernetes.io/unschedulable", "NoSchedule", add=True)
        self._status(name, "Unknown", "NodeStatusUnknown", writer="kube-controller-manager (node lifecycle)")
        self._taint(name, "node.kubernetes.io/unreachable", "NoExecute", add=True)
        self._status(name, "True", "KubeletReady")
        self._taint(name, "node.kubernetes.io/unreachable", "NoExecute", add=False)
        annotations = self.nodes[name]["metadata"]["annotations"]
        ip = annotations.get(FLANNEL + "public-ip", "192.168.0.1")
        if self.rng.random() < P_ADDRESS_CHANGES:
            ip = f"192.168.1.{self.rng.randrange(1, 255)}"
        ip = annotations.get(FLANNEL + "public-ip-overwrite", ip)  # flannel then publishes the overwrite
        self._flannel_start(name, ip)
        self._emit("cordon", "operator (kubectl uncordon)", name, cordon(False))
        self._taint(name, "node.kubernetes.io/unschedulable", "NoSchedule", add=False)

    def round(self, maintenance: bool) -> None:
        for name in sorted(self.nodes):
            if maintenance:
                self.maintain(name)
            for _ in range(STATUS_REPORTS_PER_ROUND):
                self._status(name, "True", "KubeletReady")
            if self.rng.random() < P_LABEL:
                self._label(name, "node.example.com/maintenance-window", self.rng.choice(["a", "b", "c"]))
        self.leave()
        for _ in range(self.rng.choice([1, 2])):
            self.join()


def node_writes(n: int = 1000, seed: int = 16, allocator: str = "kube-controller-manager") -> list[Write]:
    """``n`` Node writes of a cluster's life, in order (the same list for the same arguments)."""
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator must be one of {ALLOCATORS}, not {allocator!r}")
    cluster = _Cluster(random.Random(seed), allocator)
    for k in range(10):
        cluster.join(control_plane=k < 3)
    rounds = 0
    while len(cluster.writes) < n:
        cluster.round(maintenance=rounds % 2 == 0)
        rounds += 1
    return cluster.writes[:n]

"""``flannel-guard doctor``: a read-only diagnosis of a live cluster, with the exact fix for each finding.

The seed's troubleshooting, automated. Two halves, as everywhere in this project:

* :func:`gather` is the thin I/O shell: Nodes, the cluster-cidr sources
  (:func:`webhook.cluster.discover`), the flannel ConfigMaps, the flannel pods
  (label ``app=flannel`` in kube-flannel and kube-system) and the last log line of
  those not Ready. Raw JSON only, a timeout on every call; 403 and 404 are noted
  and the diagnosis goes on with what could be read. Only an API that cannot be
  reached at all (or refuses the credentials) raises :class:`ClusterUnreadable`.
* :func:`diagnose` is pure: :class:`ClusterFacts` in, :class:`Report` out. It
  reuses the admission rules (:func:`~webhook.rules.configmap.review_configmap`,
  :func:`~webhook.rules.node.review_node`) and the allocator
  (:class:`~webhook.cidrset.CidrSet`), so the doctor and the webhook never judge
  differently.

Which cluster-cidr the fixes aim at: the effective one of
:func:`webhook.discovery.resolve` (``--cluster-cidr`` override, then
kube-controller-manager, kubeadm-config, kube-proxy); when no source holds a
value (the seed: ``kubeadm init`` without ``--pod-network-cidr``), flannel's own
``Network`` is the only pod network the cluster has, so that is the one proposed.

Every finding carries its fix twice: as text an operator can paste, and as a
dict (``{"action": "patch-node", ...}``) in ``--output json`` that a script (or a
test) can apply. Free subnets for nodes are computed from the live state, one
distinct subnet per node. Exit codes: 0 healthy, 1 findings, 2 the cluster
could not be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes.client
import urllib3
from kubernetes.client.exceptions import ApiException

from webhook.cidr import CidrError, IPNetwork, NodeCidrIndex, parse_cidr, parse_cidr_list
from webhook.cidrset import CidrSet, CidrSetError, DualStackAllocator, MaskTooBigError
from webhook.cluster import api_client, discover
from webhook.discovery import CidrSource, Resolution, SourceKind
from webhook.rules.configmap import NET_CONF_KEY, review_configmap
from webhook.rules.findings import ClusterView, Finding, RuleSettings, Severity
from webhook.rules.fixnetwork import replace_top_level_value
from webhook.rules.flannel import parse_net_conf
from webhook.rules.node import review_node
from webhook.settings import env_default

__all__ = [
    "EXIT_FINDINGS",
    "EXIT_HEALTHY",
    "EXIT_UNREADABLE",
    "ClusterFacts",
    "ClusterUnreadable",
    "ConfigMapFacts",
    "DoctorFinding",
    "Fix",
    "NodeFacts",
    "PodFacts",
    "Report",
    "add_parser",
    "diagnose",
    "gather",
    "main",
    "render_json",
    "render_text",
    "run",
]

EXIT_HEALTHY, EXIT_FINDINGS, EXIT_UNREADABLE = 0, 1, 2

#: Where flannel's ConfigMap lives: kube-flannel.yml today, kube-system before v0.20.
FLANNEL_CONFIGMAPS = (("kube-flannel", "kube-flannel-cfg"), ("kube-system", "kube-flannel-cfg"))
FLANNEL_POD_LABEL = "app=flannel"
FLANNEL_CONTAINER = "kube-flannel"
KCM_MANIFEST = "/etc/kubernetes/manifests/kube-controller-manager.yaml"
#: flannel's log line for the seed's failure (pkg/subnet/kube/kube.go).
NO_POD_CIDR_LOG = "pod cidr not assigned"
_LOG_TAIL = 20
_KLOG_ERROR = re.compile(r"^[EF]\d{4} ")
_ERROR_WORDS = re.compile(r"\b(error|failed|fatal|panic)\b", re.IGNORECASE)


class ClusterUnreadable(Exception):
    """Raised by :func:`gather` when the API cannot be reached or refuses the credentials (exit 2)."""


# --- facts: plain data from the API -------------------------------------------------------------


@dataclass(frozen=True)
class ConfigMapFacts:
    """A flannel ConfigMap that exists; ``net_conf`` is None when it has no net-conf.json key."""

    namespace: str
    name: str
    net_conf: str | None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class NodeFacts:
    """A Node reduced to its name and its podCIDRs as written (``spec.podCIDRs``, else ``[spec.podCIDR]``)."""

    name: str
    pod_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodFacts:
    """A flannel pod: where it runs, whether it is Ready, and its last log line when read."""

    namespace: str
    name: str
    node: str | None
    ready: bool
    state: str = ""
    restarts: int = 0
    last_log_line: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ClusterFacts:
    """Everything :func:`diagnose` reads; :func:`gather` fills it from the API, tests by hand."""

    resolution: Resolution
    configmaps: tuple[ConfigMapFacts, ...] = ()
    nodes: tuple[NodeFacts, ...] = ()
    pods: tuple[PodFacts, ...] = ()
    nodes_readable: bool = True
    # What could not be read (403, 404, timeouts), for the report's notes.
    notes: tuple[str, ...] = ()


# --- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fix:
    """One step that mends a finding: ``text`` for a person, ``action`` + ``params`` for a script."""

    action: str
    text: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, **self.params, "text": self.text}


@dataclass(frozen=True)
class DoctorFinding:
    """Something wrong (or about to go wrong) in the cluster, and how to fix it."""

    severity: Severity
    code: str
    subject: str
    summary: str
    detail: str = ""
    fixes: tuple[Fix, ...] = ()
    root_cause: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity.value, "code": self.code, "subject": self.subject,
                "rootCause": self.root_cause, "summary": self.summary, "detail": self.detail,
                "fixes": [f.to_json() for f in self.fixes]}


@dataclass(frozen=True)
class SourceRow:
    """One place the cluster-cidr is written, its value and how it relates to the proposed one."""

    label: str
    origin: str
    value: str
    status: str


@dataclass(frozen=True)
class CapacityRow:
    """How many node blocks of ``mask`` one cluster-cidr family holds, against the nodes there are."""

    cluster_cidr: IPNetwork
    mask: int
    blocks: int
    nodes: int
    used: int


@dataclass(frozen=True)
class ConfigMapRow:
    """A flannel ConfigMap: its networks, backend, whether flannel accepts it and whether it matches."""

    ref: str
    network: str
    ipv6_network: str
    backend: str
    accepted: bool
    matches: bool | None


@dataclass(frozen=True)
class NodeRow:
    """A Node's podCIDRs and what is wrong with them (empty: ok)."""

    name: str
    pod_cidrs: tuple[str, ...]
    problems: tuple[str, ...]


@dataclass(frozen=True)
class Report:
    """The whole diagnosis; :func:`render_text` and :func:`render_json` show it."""

    cluster_cidr: tuple[IPNetwork, ...] | None
    cluster_cidr_origin: str
    agree: bool
    sources: tuple[SourceRow, ...]
    controller_manager_found: bool
    allocate_node_cidrs: bool | None
    mask_v4: int
    mask_v6: int
    capacity: tuple[CapacityRow, ...]
    configmaps: tuple[ConfigMapRow, ...]
    nodes: tuple[NodeRow, ...]
    pods_not_ready: tuple[PodFacts, ...]
    pods_seen: int
    findings: tuple[DoctorFinding, ...]
    notes: tuple[str, ...]

    @property
    def root_cause(self) -> DoctorFinding | None:
        return next((f for f in self.findings if f.root_cause), None)

    @property
    def exit_code(self) -> int:
        return EXIT_FINDINGS if self.findings else EXIT_HEALTHY

    @property
    def fixes(self) -> list[Fix]:
        """Every fix in the order to apply them, each once."""
        seen: set[str] = set()
        out: list[Fix] = []
        for f in self.findings:
            for fix in f.fixes:
                key = json.dumps(fix.to_json(), sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    out.append(fix)
        return out

    def describe_cidr(self) -> str:
        return ",".join(map(str, self.cluster_cidr)) if self.cluster_cidr else "unknown"


# --- diagnosis (pure) ---------------------------------------------------------------------------

_LABELS = {
    SourceKind.FLAG: "--cluster-cidr flag",
    SourceKind.CONTROLLER_MANAGER: "kube-controller-manager --cluster-cidr",
    SourceKind.KUBEADM: "kubeadm-config networking.podSubnet",
    SourceKind.KUBE_PROXY: "kube-proxy config.conf clusterCIDR",
}
_NETWORK_CODES = frozenset({"NetworkMismatch", "FamilyNotInFlannel", "FamilyNotInCluster", "MissingNetwork",
                            "HostBitsSet"})
_NODE_PROBLEMS = {
    "OutsideClusterCIDR": "outside", "WrongSize": "wrong-size", "InvalidPodCIDR": "invalid",
    "FamilyNotInCluster": "wrong-family", "TooManyPodCIDRs": "too-many", "DuplicateFamily": "too-many",
    "PodCIDRMismatch": "podCIDR≠podCIDRs[0]",
}


def _cidrs(nets: Iterable[IPNetwork]) -> str:
    return ",".join(str(n) for n in nets)


def _of_family(nets: Sequence[IPNetwork] | None, version: int) -> IPNetwork | None:
    return next((n for n in nets or () if n.version == version), None)


def _patch_text(name: str, cidrs: Sequence[IPNetwork]) -> tuple[str, dict[str, Any]]:
    patch = {"spec": {"podCIDR": str(cidrs[0]), "podCIDRs": [str(c) for c in cidrs]}}
    return f"kubectl patch node {name} -p '{json.dumps(patch, separators=(',', ':'))}'", patch


def _flannel_networks(cm: ConfigMapFacts) -> tuple[IPNetwork, ...] | None:
    """The networks flannel would use from this ConfigMap, None when it would refuse it."""
    if cm.net_conf is None:
        return None
    conf = parse_net_conf(cm.net_conf).conf
    if conf is None:
        return None
    nets = [p.network for p, on in ((conf.network, conf.enable_ipv4), (conf.ipv6_network, conf.enable_ipv6))
            if p is not None and on]
    return tuple(nets) or None


def _target(res: Resolution, cms: Sequence[ConfigMapFacts]) -> tuple[tuple[IPNetwork, ...] | None, str]:
    """The cluster-cidr the fixes aim at, and where it comes from."""
    if res.effective is not None:
        return res.effective.networks, res.effective.origin
    for cm in cms:
        nets = _flannel_networks(cm)
        if nets:
            return nets, f"flannel ConfigMap {cm.ref} net-conf.json Network"
    return None, "nowhere"


def _kcm_flags_fix(flags: dict[str, str], remove: Sequence[str] = ()) -> Fix:
    shown = " ".join(f"--{k}={v}" for k, v in flags.items())
    text = (f"on every control-plane node, in {KCM_MANIFEST} set {shown} in spec.containers[0].command"
            " (the kubelet restarts the static pod)")
    if remove:
        text += f"; remove {' '.join('--' + r for r in remove)}"
    return Fix("set-controller-manager-flags", text,
               {"manifest": KCM_MANIFEST, "flags": dict(flags), "remove": list(remove)})


def _kubeadm_fix(value: str) -> Fix:
    return Fix("set-kubeadm-pod-subnet",
               "kubectl -n kube-system edit configmap kubeadm-config: in ClusterConfiguration set"
               f" networking.podSubnet: {value} (so that kubeadm upgrade and new control-plane nodes keep"
               " --cluster-cidr)",
               {"namespace": "kube-system", "configMap": "kubeadm-config", "podSubnet": value})


def _kube_proxy_fix(value: str) -> Fix:
    return Fix("set-kube-proxy-cluster-cidr",
               f"kubectl -n kube-system edit configmap kube-proxy: in config.conf set clusterCIDR: {value},"
               " then `kubectl -n kube-system rollout restart daemonset kube-proxy`",
               {"namespace": "kube-system", "configMap": "kube-proxy", "clusterCIDR": value})


class _Diagnosis:
    """The state of one :func:`diagnose` call; each ``_`` method adds one section."""

    def __init__(self, facts: ClusterFacts, settings: RuleSettings) -> None:
        self.facts = facts
        self.res = facts.resolution
        self.settings = settings
        self.target, self.origin = _target(self.res, facts.configmaps)
        self.findings: list[DoctorFinding] = []
        self.notes: list[str] = [*self.res.absent, *facts.notes]
        self.kcm_found = any(s.kind is SourceKind.CONTROLLER_MANAGER for s in self.res.sources)
        self.kubeadm_found = any(s.kind is SourceKind.KUBEADM for s in self.res.sources)
        self.index = NodeCidrIndex()
        self.parsed: dict[str, tuple[IPNetwork, ...]] = {}
        for n in facts.nodes:
            nets: list[IPNetwork] = []
            for text in n.pod_cidrs:
                try:
                    p = parse_cidr(text)
                except CidrError:
                    continue
                if not p.host_bits_set:
                    nets.append(p.network)
            self.parsed[n.name] = tuple(nets)
            self.index.set(n.name, nets)
        self.view = ClusterView(cluster_cidr=self.target, cidr_source=self.origin, nodes=self.index,
                                mask_v4=self.res.mask_v4, mask_v6=self.res.mask_v6,
                                disputed=not self.res.agree)

    @property
    def target_text(self) -> str:
        return _cidrs(self.target or ())

    def add(self, severity: Severity, code: str, subject: str, summary: str, detail: str = "",
            fixes: Iterable[Fix] = ()) -> None:
        self.findings.append(DoctorFinding(severity, code, subject, summary, detail, tuple(fixes)))

    # -- cluster-cidr sources and allocation ------------------------------------------------------

    def sources(self) -> list[SourceRow]:
        rows: list[SourceRow] = []
        by_kind = {s.kind for s in self.res.sources}
        for kind in SourceKind:
            if kind not in by_kind:
                rows.append(SourceRow(_LABELS[kind], "", "-", "not given" if kind is SourceKind.FLAG else
                                      "no value"))
            for s in self.res.sources:
                if s.kind is kind:
                    value = s.describe() if s.networks or s.error else "-"
                    rows.append(SourceRow(_LABELS[kind], s.origin, value, self._status(s)))
        for cm in self.facts.configmaps:
            nets = _flannel_networks(cm)
            origin = f"flannel ConfigMap {cm.ref} net-conf.json Network"
            if nets is None:
                status = "refused by flannel"
            elif origin == self.origin:
                status = "proposed (no other source)"
            else:
                status = "agrees" if nets == self.target else "differs"
            rows.append(SourceRow(f"flannel {cm.ref} Network", origin,
                                  _cidrs(nets) if nets else "-", status))
        return rows

    def _status(self, s: CidrSource) -> str:
        if s.error:
            return "does not parse"
        if not s.networks:
            return "unset (no value)"
        if s is self.res.effective:
            return "effective"
        return "agrees" if s.networks == self.target else "differs"

    def cluster(self) -> None:
        """The root of most trouble: the cluster-cidr sources and kube-controller-manager's allocation."""
        res, target = self.res, self.target
        kcm_flags: dict[str, str] = {}
        kcm_source = next((s for s in res.sources if s.kind is SourceKind.CONTROLLER_MANAGER), None)
        if target is not None and kcm_source is not None:
            if kcm_source.networks != target:
                kcm_flags["cluster-cidr"] = self.target_text
            if res.allocate_node_cidrs is not True:
                kcm_flags["allocate-node-cidrs"] = "true"
        kubeadm = next((s for s in res.sources if s.kind is SourceKind.KUBEADM), None)
        kubeadm_wrong = target is not None and kubeadm is not None and kubeadm.networks != target

        if res.effective is None:
            fixes: list[Fix] = []
            if kcm_flags:
                fixes.append(_kcm_flags_fix(kcm_flags))
            if kubeadm_wrong:
                fixes.append(_kubeadm_fix(self.target_text))
            no_alloc = "kube-controller-manager has no --cluster-cidr and does not allocate node CIDRs"
            if not self.kcm_found:
                no_alloc = "no kube-controller-manager --cluster-cidr could be read"
            head = "kubeadm init ran without --pod-network-cidr: " if kubeadm is not None else ""
            if target is None:
                self.add(Severity.ERROR, "NoClusterCIDR", "cluster-cidr",
                         f"{head}{no_alloc}, and there is no flannel Network either: nodes get no podCIDR.",
                         "No source holds a pod network (kube-controller-manager, kubeadm-config, kube-proxy,"
                         " flannel ConfigMap), so none can be proposed.",
                         [Fix("manual", "choose the pod network (e.g. 10.244.0.0/16, not overlapping the"
                              " service range or the hosts' networks), then run `flannel-guard doctor"
                              " --cluster-cidr CIDR` for the exact fixes")])
                return
            self.add(Severity.ERROR, "NoClusterCIDR", "cluster-cidr",
                     f"{head}{no_alloc}, so nodes get no podCIDR and flannel fails with"
                     f" '{NO_POD_CIDR_LOG}'.",
                     "No cluster-cidr source holds a value (kube-controller-manager --cluster-cidr,"
                     " kubeadm-config podSubnet, kube-proxy clusterCIDR); the only pod network in the"
                     " cluster is flannel's"
                     f" Network {self.target_text} ({self.origin.removeprefix('flannel ConfigMap ')}):"
                     " make it the cluster-cidr.",
                     fixes)
            return

        for s in res.sources:
            label = _LABELS[s.kind]
            if s.kind is SourceKind.CONTROLLER_MANAGER or (s.networks == target and not s.error):
                continue
            if not s.networks and not s.error:
                if s.kind is SourceKind.KUBEADM:
                    self.add(Severity.ERROR, "KubeadmNoPodSubnet", "kubeadm-config",
                             "kubeadm-config has no networking.podSubnet (kubeadm init ran without"
                             f" --pod-network-cidr) but the cluster-cidr is {self.target_text}.",
                             f"kubeadm upgrade rewrites {KCM_MANIFEST} from it, without --cluster-cidr and"
                             " --allocate-node-cidrs: new nodes then get no podCIDR.",
                             [_kubeadm_fix(self.target_text)])
                continue
            why = f"does not parse ({s.error})" if s.error else f"is {s.describe()}"
            fix = (_kubeadm_fix(self.target_text) if s.kind is SourceKind.KUBEADM
                   else _kube_proxy_fix(self.target_text) if s.kind is SourceKind.KUBE_PROXY
                   else Fix("manual", "run doctor without --cluster-cidr, or with the cluster's value"))
            self.add(Severity.ERROR, "ClusterCIDRDisagreement", label,
                     f"{label} {why} but the cluster-cidr is {self.target_text} (from {self.origin}).",
                     "The settings that must agree (kubeadm podSubnet, kube-controller-manager"
                     " --cluster-cidr, flannel Network, node podCIDRs) do not.", [fix])

        if kcm_flags:
            parts = []
            if "cluster-cidr" in kcm_flags:
                have = kcm_source.describe() if kcm_source else "unset"
                parts.append(f"--cluster-cidr is {have}, not {self.target_text}")
            if "allocate-node-cidrs" in kcm_flags:
                parts.append("it runs without --allocate-node-cidrs=true")
            fixes = [_kcm_flags_fix(kcm_flags)]
            alloc_off = "allocate-node-cidrs" in kcm_flags
            self.add(Severity.ERROR, "NodeCIDRAllocationOff" if alloc_off else "ClusterCIDRDisagreement",
                     "kube-controller-manager",
                     f"kube-controller-manager: {'; '.join(parts)}"
                     + (": new nodes get no podCIDR." if alloc_off else "."),
                     "It hands out every node's podCIDR; flannel then fails with"
                     f" '{NO_POD_CIDR_LOG}' (flags lost on upgrade, or kubeadm without podSubnet).", fixes)
        elif not self.kcm_found:
            self.notes.append("kube-controller-manager pod not found (label"
                              " component=kube-controller-manager in kube-system): cannot tell whether it"
                              " allocates node CIDRs")

    def conflicts(self) -> None:
        """kube-controller-manager flag conflicts and the pod range overlapping the service range."""
        for note in self.res.notes:
            if "refuses to start" in note:
                self.add(Severity.ERROR, "ControllerManagerFlagConflict", "kube-controller-manager", note,
                         fixes=[Fix("manual", f"in {KCM_MANIFEST} keep only --node-cidr-mask-size-ipv4"
                                    " / -ipv6 (dual-stack refuses --node-cidr-mask-size)")])
        service = self.res.service
        if not self.target or service is None:
            return
        for pod_net in self.target:
            for svc in service.networks:
                if pod_net.version == svc.version and pod_net.overlaps(svc):  # type: ignore[arg-type]
                    self.add(Severity.ERROR, "PodServiceOverlap", "cluster-cidr",
                             f"the pod range {pod_net} overlaps the service range {svc} ({service.origin}).",
                             "Service IPs and pod IPs collide; traffic to either breaks.",
                             [Fix("manual", "choose a cluster-cidr that does not overlap the service range;"
                                  " node podCIDRs cannot be moved in place: nodes must be re-registered")])

    def capacity(self) -> list[CapacityRow]:
        rows: list[CapacityRow] = []
        for net in self.target or ():
            mask = self.view.mask_for(net.version)
            fam_nodes = len(self.facts.nodes)
            flag = f"--node-cidr-mask-size-ipv{net.version}"
            try:
                cset = CidrSet(net, mask)
            except MaskTooBigError as e:
                rows.append(CapacityRow(net, mask, 0, fam_nodes, 0))
                self.add(Severity.ERROR, "NodeMaskTooLong", "kube-controller-manager", f"{e}.",
                         "kube-controller-manager refuses to start (ErrCIDRSetSubNetTooBig).",
                         [_kcm_flags_fix({flag[2:]: str(net.prefixlen + 16)}, ["node-cidr-mask-size"])])
                continue
            except CidrSetError:
                cset = None
            if cset is not None:
                for nets in self.parsed.values():
                    for n in nets:
                        if n.version == net.version and n.overlaps(net):  # type: ignore[arg-type]
                            cset.occupy(n)
            blocks = cset.capacity if cset else 0
            used = cset.used if cset else 0
            rows.append(CapacityRow(net, mask, blocks, fam_nodes, used))
            if blocks < fam_nodes or blocks == 0:
                need = max(fam_nodes, 1)
                suggest = net.prefixlen + max(0, math.ceil(math.log2(need)))
                bigger = mask - max(0, math.ceil(math.log2(need)))
                holds = "no node block" if blocks == 0 else f"only {blocks} node block(s)"
                fixes = []
                if suggest <= net.max_prefixlen - 2:
                    fixes.append(_kcm_flags_fix({flag[2:]: str(suggest)}, ["node-cidr-mask-size"]))
                fixes.append(Fix("manual", f"or use a larger cluster-cidr: a /{max(bigger, 0)} or larger has"
                                 f" room for {need} node block(s) of /{mask} (kubeadm networking.podSubnet,"
                                 " kube-controller-manager --cluster-cidr and flannel Network together)"))
                self.add(Severity.ERROR, "ClusterCIDRTooSmall", "cluster-cidr",
                         f"the cluster-cidr {net} holds {holds} of /{mask} for {fam_nodes}"
                         " node(s).",
                         "kube-controller-manager then crash-loops or reports CIDRNotAvailable ('no remaining"
                         " CIDRs left to allocate'), and flannel fails with 'open /run/flannel/subnet.env'.",
                         fixes)
            elif cset is not None and cset.full and fam_nodes:
                self.add(Severity.WARNING, "ClusterCIDRFull", "cluster-cidr",
                         f"every node block of /{mask} in {net} is in use: the next node gets no podCIDR.",
                         fixes=[Fix("manual", "use a larger cluster-cidr, or a longer node mask size for new"
                                    " clusters")])
        return rows

    # -- flannel ConfigMaps -----------------------------------------------------------------------

    def configmaps(self) -> list[ConfigMapRow]:
        rows: list[ConfigMapRow] = []
        if not self.facts.configmaps:
            refs = " and ".join(f"{ns}/{n}" for ns, n in FLANNEL_CONFIGMAPS)
            self.add(Severity.WARNING, "NoFlannelConfigMap", "flannel",
                     f"no flannel ConfigMap found ({refs}).",
                     "flannel reads net-conf.json from it and does not start without it.",
                     [Fix("manual", "kubectl apply -f kube-flannel.yml with net-conf.json \"Network\": \""
                          f"{self.target_text or '<the cluster-cidr>'}\"")])
        nets_seen = {_flannel_networks(cm) for cm in self.facts.configmaps}
        if len(nets_seen) > 1:
            self.notes.append("the flannel ConfigMaps differ; flannel reads the one in the namespace of its"
                              " DaemonSet (kube-flannel since v0.20)")
        for cm in self.facts.configmaps:
            obj = {"metadata": {"namespace": cm.namespace, "name": cm.name},
                   "data": {} if cm.net_conf is None else {NET_CONF_KEY: cm.net_conf}}
            found = review_configmap("CREATE", obj, None, self.view, self.settings)
            found = [f for f in found if f.code != "ClusterCIDRUnknown"]
            parsed = parse_net_conf(cm.net_conf).conf if cm.net_conf is not None else None
            fixed = False
            for f in found:
                fixes: list[Fix] = []
                if f.code in _NETWORK_CODES and not fixed and self.target and cm.net_conf is not None:
                    corrected = _corrected_net_conf(cm.net_conf, self.target)
                    if corrected is not None:
                        fixed = True
                        fixes.append(Fix(
                            "set-flannel-network",
                            f"kubectl -n {cm.namespace} edit configmap {cm.name}:"
                            f" set data.{NET_CONF_KEY} to\n{corrected}\nthen `kubectl -n {cm.namespace}"
                            " rollout restart daemonset"
                            " kube-flannel-ds`",
                            {"namespace": cm.namespace, "configMap": cm.name, "netConf": corrected}))
                if not fixes and f.fix:
                    fixes.append(Fix("manual", f.fix))
                self.add(f.severity, f.code, f"flannel ConfigMap {cm.ref}", f.summary, f.detail, fixes)
            errs = {f.code for f in found if f.severity is Severity.ERROR}
            rows.append(ConfigMapRow(
                ref=cm.ref,
                network=(str(parsed.network.network)
                         if parsed and parsed.network and parsed.enable_ipv4 else "-"),
                ipv6_network=(str(parsed.ipv6_network.network)
                              if parsed and parsed.ipv6_network and parsed.enable_ipv6 else "-"),
                backend=parsed.backend_type if parsed else "-",
                accepted=parsed is not None,
                matches=None if not self.target or parsed is None else not (errs & _NETWORK_CODES),
            ))
        return rows

    # -- nodes ------------------------------------------------------------------------------------

    def nodes(self) -> list[NodeRow]:
        if not self.facts.nodes_readable:
            self.add(Severity.WARNING, "NodesUnreadable", "nodes",
                     "the Nodes could not be listed: their podCIDRs were not checked.",
                     fixes=[Fix("manual", "run doctor with credentials that may list nodes"
                                " (kubectl auth can-i list nodes)")])
        problems: dict[str, list[str]] = {}
        rule_findings: dict[str, list[Finding]] = {}
        for n in sorted(self.facts.nodes, key=lambda n: n.name):
            probs: list[str] = []
            if not n.pod_cidrs:
                probs.append("missing")
            elif self.target:
                obj = {"metadata": {"name": n.name},
                       "spec": {"podCIDR": n.pod_cidrs[0], "podCIDRs": list(n.pod_cidrs)}}
                found = review_node("CREATE", obj, None, self.view)
                rule_findings[n.name] = found
                for f in found:
                    if f.code == "OverlapsNode":
                        other = f.summary.split(" overlaps node ", 1)[-1].split("'s ", 1)[0]
                        probs.append(f"overlaps {other}")
                    elif f.code == "MissingFamily":
                        probs.append(f"missing-{'ipv6' if 'IPv6' in f.summary else 'ipv4'}")
                    else:
                        probs.append(_NODE_PROBLEMS.get(f.code, f.code))
            problems[n.name] = list(dict.fromkeys(probs))

        # Which nodes keep their podCIDRs: in name order, those without a problem of their own
        # that overlap no node kept before them. The others are re-registered with a free subnet.
        kept = NodeCidrIndex()
        recreate: list[str] = []
        for name in sorted(problems):
            probs = [p for p in problems[name] if not p.startswith("overlaps")]
            nets = self.parsed.get(name, ())
            if "missing" in probs:
                continue
            errors = [p for p in probs if not p.startswith("missing-")]
            if errors or any(kept.overlapping(n, limit=1) for n in nets):
                recreate.append(name)
            else:
                kept.set(name, nets)
        allocator = self._allocator(kept, recreate)

        for name in sorted(problems):
            probs = problems[name]
            if probs == ["missing"]:
                self._missing(name, allocator)
            elif name in recreate:
                self._recreate(name, probs, rule_findings.get(name, []), allocator, kept)
            elif any(p.startswith("missing-") for p in probs):
                fam = "IPv6" if "missing-ipv6" in probs else "IPv4"
                self.add(Severity.WARNING, "MissingFamily", f"node {name}",
                         f"node {name} has no {fam} podCIDR but the cluster-cidr {self.target_text} is"
                         " dual-stack.",
                         "Its pods get no IPv6 connectivity; a podCIDR can only be set once.",
                         [self._recreate_fix(name, allocator)])
        return [NodeRow(n.name, n.pod_cidrs, tuple(problems[n.name]))
                for n in sorted(self.facts.nodes, key=lambda n: n.name)]

    def _allocator(self, kept: NodeCidrIndex, recreate: list[str]) -> DualStackAllocator | None:
        if not self.target:
            return None
        try:
            allocator = DualStackAllocator(self.target, mask_v4=self.view.mask_v4, mask_v6=self.view.mask_v6)
        except (CidrSetError, ValueError):
            return None
        allocator.seed(kept)
        # Nodes to re-register keep their subnet until then: avoid the ones of the node size.
        for name in recreate:
            allocator.occupy(n for n in self.parsed.get(name, ())
                             if n.prefixlen == self.view.mask_for(n.version))
        return allocator

    def _free(self, allocator: DualStackAllocator | None) -> tuple[IPNetwork, ...] | None:
        if allocator is None:
            return None
        try:
            return allocator.allocate()
        except CidrSetError:
            return None

    def _missing(self, name: str, allocator: DualStackAllocator | None) -> None:
        summary = f"node {name} has no podCIDR: flannel on it fails with '{NO_POD_CIDR_LOG}'."
        free = self._free(allocator)
        if free is None:
            why = ("the cluster-cidr is unknown" if not self.target
                   else f"no free /{self.view.mask_v4} is left in {self.target_text}")
            self.add(Severity.ERROR, "NodeWithoutPodCIDR", f"node {name}", summary,
                     f"No subnet can be proposed: {why}.",
                     [Fix("manual", "fix the cluster-cidr first (see above), then run doctor again")])
            return
        text, patch = _patch_text(name, free)
        detail = "A free subnet, computed from the live state (unique, inside the cluster-cidr)."
        if self.res.allocate_node_cidrs is True:
            detail += " kube-controller-manager allocates: if it does not, look at its log."
        else:
            detail += " Once kube-controller-manager allocates, it does this for new nodes."
        self.add(Severity.ERROR, "NodeWithoutPodCIDR", f"node {name}", summary, detail,
                 [Fix("patch-node", text, {"node": name, "patch": patch})])

    def _recreate_fix(self, name: str, allocator: DualStackAllocator | None) -> Fix:
        free = self._free(allocator)
        text = (f"a podCIDR cannot change once set: `kubectl drain {name} --ignore-daemonsets"
                f" --delete-emptydir-data && kubectl delete node {name}`, restart the kubelet on {name}"
                " so that it registers again")
        params: dict[str, Any] = {"node": name}
        if free is not None:
            patch_text, patch = _patch_text(name, free)
            text += f", then (unless kube-controller-manager allocates) `{patch_text}`"
            params["podCIDRs"] = [str(n) for n in free]
            params["patch"] = patch
        return Fix("recreate-node", text, params)

    def _recreate(self, name: str, probs: list[str], found: list[Finding],
                  allocator: DualStackAllocator | None, kept: NodeCidrIndex) -> None:
        errs = [f for f in found if f.severity is Severity.ERROR]
        own = [f for f in errs if f.code != "OverlapsNode"]
        if own:
            summary = " ".join(f.summary for f in own[:3])
        else:
            nets = self.parsed.get(name, ())
            hits = [h for n in nets for h in kept.overlapping(n, limit=1)]
            other = hits[0] if hits else ("another node", nets[0] if nets else "?")
            summary = (f"node {name}: podCIDR {_cidrs(nets)} overlaps node {other[0]}'s {other[1]},"
                       f" which keeps it.")
        detail = " ".join(dict.fromkeys(f.detail for f in errs if f.detail))
        self.add(Severity.ERROR, "BadNodePodCIDR", f"node {name}", summary, detail,
                 [self._recreate_fix(name, allocator)])

    # -- flannel pods -----------------------------------------------------------------------------

    def pods(self) -> list[PodFacts]:
        bad = [p for p in self.facts.pods if not p.ready]
        if not self.facts.pods:
            self.notes.append(f"no flannel pods found (label {FLANNEL_POD_LABEL} in kube-flannel and"
                              " kube-system)")
        for p in bad:
            line = p.last_log_line
            where = f" on {p.node}" if p.node else ""
            summary = f"flannel pod {p.ref}{where} is not Ready ({p.state or 'unknown state'}"
            summary += f", {p.restarts} restarts)." if p.restarts else ")."
            restart = Fix("restart-pod",
                          f"after the fixes above: kubectl -n {p.namespace} delete pod {p.name}"
                          " (the DaemonSet starts a new one at once instead of waiting out the"
                          " CrashLoopBackOff backoff)",
                          {"namespace": p.namespace, "pod": p.name})
            if line and NO_POD_CIDR_LOG in line:
                detail = f"Its node has no podCIDR (see node {p.node}). Last log line: {line}"
                fixes = [restart]
            elif line and ("doesn't contain" in line or "net config" in line):
                detail = f"flannel's Network does not contain the node's podCIDR. Last log line: {line}"
                fixes = [restart]
            else:
                detail = f"Last log line: {line}" if line else "Its log could not be read or is empty."
                fixes = [Fix("manual", f"kubectl -n {p.namespace} logs {p.name} -c {FLANNEL_CONTAINER}"
                             f" --previous; kubectl -n {p.namespace} describe pod {p.name}"), restart]
            self.add(Severity.ERROR, "FlannelPodNotReady", f"pod {p.ref}", summary, detail, fixes)
        return bad


def _corrected_net_conf(text: str, target: Sequence[IPNetwork]) -> str | None:
    """``text`` with Network / IPv6Network (and the Enable flags) set to ``target``; None if not JSON."""
    v4, v6 = _of_family(target, 4), _of_family(target, 6)
    conf = parse_net_conf(text).conf
    simple = (conf is not None and conf.enable_ipv4 == (v4 is not None)
              and conf.enable_ipv6 == (v6 is not None))
    if simple:
        out: str | None = text
        for key, want in (("Network", v4), ("IPv6Network", v6)):
            if want is not None and out is not None:
                out = replace_top_level_value(out, key, str(want))
        if out is not None:
            return out
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    wanted: dict[str, Any] = {"Network": str(v4) if v4 else None, "EnableIPv4": v4 is not None,
                              "IPv6Network": str(v6) if v6 else None, "EnableIPv6": v6 is not None}
    for key in wanted:
        for k in [k for k in doc if k.casefold() == key.casefold()]:
            del doc[k]
    for key, value in wanted.items():
        if value is None or (key, value) in (("EnableIPv4", True), ("EnableIPv6", False)):
            continue
        doc[key] = value
    doc.setdefault("Backend", {"Type": "vxlan"})
    return json.dumps(doc, indent=2)


def diagnose(facts: ClusterFacts, settings: RuleSettings | None = None) -> Report:
    """The whole diagnosis of ``facts``: tables, findings (root cause first) and fixes. Pure."""
    d = _Diagnosis(facts, settings or RuleSettings())
    sources = d.sources()
    d.cluster()
    d.conflicts()
    capacity = d.capacity()
    configmaps = d.configmaps()
    nodes = d.nodes()
    pods = d.pods()
    findings = d.findings
    if findings:
        # The first error is the root cause: cluster-wide findings come before their symptoms.
        first = next((i for i, f in enumerate(findings) if f.severity is Severity.ERROR), 0)
        f = findings[first]
        findings[first] = DoctorFinding(f.severity, f.code, f.subject, f.summary, f.detail, f.fixes, True)
    return Report(
        cluster_cidr=d.target,
        cluster_cidr_origin=d.origin,
        agree=facts.resolution.agree,
        sources=tuple(sources),
        controller_manager_found=d.kcm_found,
        allocate_node_cidrs=facts.resolution.allocate_node_cidrs,
        mask_v4=facts.resolution.mask_v4,
        mask_v6=facts.resolution.mask_v6,
        capacity=tuple(capacity),
        configmaps=tuple(configmaps),
        nodes=tuple(nodes),
        pods_not_ready=tuple(pods),
        pods_seen=len(facts.pods),
        findings=tuple(findings),
        notes=tuple(dict.fromkeys(d.notes)),
    )


# --- rendering ----------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Aligned columns, two spaces apart; the last column is not padded (it may be long)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers) - 1)]
    out = []
    for r in [headers, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(r, widths, strict=False)] + [str(r[-1])]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def _allocation_line(r: Report) -> str:
    if not r.controller_manager_found:
        alloc = "unknown (no kube-controller-manager pod found)"
    elif r.allocate_node_cidrs is True:
        alloc = "yes"
    elif r.allocate_node_cidrs is False:
        alloc = "NO (--allocate-node-cidrs=false)"
    else:
        alloc = "NO (--allocate-node-cidrs not set)"
    return (f"  kube-controller-manager allocates node CIDRs: {alloc};"
            f" node mask /{r.mask_v4} (IPv4), /{r.mask_v6} (IPv6)")


def render_text(r: Report) -> str:
    """The report as an operator reads it: status first, then one table per section, then the fixes."""
    errors = sum(1 for f in r.findings if f.severity is Severity.ERROR)
    warns = len(r.findings) - errors
    lines = [f"flannel-guard doctor: {'HEALTHY' if not r.findings else 'UNHEALTHY'}"
             f" ({errors} error(s), {warns} warning(s))"]
    if r.root_cause:
        lines += textwrap.wrap(f"ROOT CAUSE: {r.root_cause.summary}", 110, subsequent_indent="  ")
    valued = [s for s in r.sources if s.status in ("effective", "agrees", "differs")]
    agreement = ("no cluster-cidr source has a value" if not valued
                 else "sources agree" if r.agree else "sources DISAGREE")
    lines += ["", f"CLUSTER-CIDR  {r.describe_cidr()}  ({agreement})", f"  from {r.cluster_cidr_origin}"]
    lines += _table(["SOURCE", "VALUE", "STATUS"], [[s.label, s.value, s.status] for s in r.sources])
    lines += ["", "NODE CIDR ALLOCATION", _allocation_line(r)]
    if r.capacity:
        lines += _table(["CLUSTER-CIDR", "MASK", "BLOCKS", "NODES", "USED", "FREE"],
                        [[str(c.cluster_cidr), f"/{c.mask}", str(c.blocks), str(c.nodes), str(c.used),
                          str(c.blocks - c.used)] for c in r.capacity])
    lines += ["", "FLANNEL CONFIGMAPS"]
    if r.configmaps:
        lines += _table(["CONFIGMAP", "NETWORK", "IPV6NETWORK", "BACKEND", "FLANNEL ACCEPTS", "MATCHES"],
                        [[c.ref, c.network, c.ipv6_network, c.backend, "yes" if c.accepted else "NO",
                          "-" if c.matches is None else "yes" if c.matches else "NO"] for c in r.configmaps])
    else:
        lines.append("  none found")
    lines += ["", f"NODES ({len(r.nodes)})"]
    lines += _table(["NODE", "PODCIDRS", "STATUS"],
                    [[n.name, _cidrs_text(n.pod_cidrs), ", ".join(n.problems) or "ok"] for n in r.nodes])
    lines += ["", f"FLANNEL PODS NOT READY ({len(r.pods_not_ready)} of {r.pods_seen})"]
    if r.pods_not_ready:
        lines += _table(["POD", "NODE", "STATE", "LAST LOG LINE"],
                        [[p.ref, p.node or "-", p.state or "-", p.last_log_line or "-"]
                         for p in r.pods_not_ready])
    lines += ["", f"FINDINGS ({len(r.findings)})" if r.findings else "FINDINGS: none"]
    for i, f in enumerate(r.findings, 1):
        tag = "  [root cause]" if f.root_cause else ""
        lines.append(f"  {i}. {f.severity.value.upper():7} {f.code}  {f.subject}{tag}")
        lines += textwrap.wrap(f.summary, 106, initial_indent="       ", subsequent_indent="       ")
        if f.detail:
            lines += textwrap.wrap(f.detail, 106, initial_indent="       ", subsequent_indent="       ")
        for fix in f.fixes:
            first, *rest = fix.text.split("\n")
            lines.append(f"       fix: {first}")
            lines += [f"            {line}" for line in rest]
    if r.notes:
        lines += ["", "NOTES"] + [f"  - {n}" for n in r.notes]
    return "\n".join(lines)


def _cidrs_text(cidrs: Sequence[str]) -> str:
    return ",".join(cidrs) if cidrs else "-"


def render_json(r: Report) -> str:
    """The report as JSON; ``fixes`` lists every machine-readable fix, in the order to apply them."""
    doc = {
        "healthy": not r.findings,
        "exitCode": r.exit_code,
        "rootCause": r.root_cause.summary if r.root_cause else None,
        "clusterCIDR": {
            "proposed": r.describe_cidr() if r.cluster_cidr else None,
            "from": r.cluster_cidr_origin,
            "agree": r.agree,
            "sources": [{"label": s.label, "origin": s.origin, "value": s.value, "status": s.status}
                        for s in r.sources],
        },
        "allocation": {
            "controllerManagerFound": r.controller_manager_found,
            "allocateNodeCIDRs": r.allocate_node_cidrs,
            "maskV4": r.mask_v4,
            "maskV6": r.mask_v6,
            "families": [{"clusterCIDR": str(c.cluster_cidr), "mask": c.mask, "blocks": c.blocks,
                          "nodes": c.nodes, "used": c.used, "free": c.blocks - c.used} for c in r.capacity],
        },
        "flannelConfigMaps": [{"configMap": c.ref, "network": c.network, "ipv6Network": c.ipv6_network,
                               "backend": c.backend, "accepted": c.accepted, "matches": c.matches}
                              for c in r.configmaps],
        "nodes": [{"name": n.name, "podCIDRs": list(n.pod_cidrs), "ok": not n.problems,
                   "problems": list(n.problems)} for n in r.nodes],
        "flannelPodsNotReady": [{"namespace": p.namespace, "name": p.name, "node": p.node, "state": p.state,
                                 "restarts": p.restarts, "lastLogLine": p.last_log_line}
                                for p in r.pods_not_ready],
        "findings": [f.to_json() for f in r.findings],
        "fixes": [fix.to_json() for fix in r.fixes],
        "notes": list(r.notes),
    }
    return json.dumps(doc, indent=2)


# --- gathering (I/O) ----------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """A short reason for a connection failure: urllib3 wraps the socket error twice."""
    inner: BaseException = exc
    while isinstance(inner, urllib3.exceptions.MaxRetryError) and inner.reason is not None:
        inner = inner.reason
    text = " ".join(str(inner).split())
    if "Connection refused" in text or isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    if isinstance(inner, urllib3.exceptions.TimeoutError | TimeoutError):
        return "timed out"
    return text[:160] or type(inner).__name__


def _items(doc: object) -> list[dict[str, Any]]:
    items = doc.get("items") if isinstance(doc, dict) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _node_facts(obj: Mapping[str, Any]) -> NodeFacts | None:
    name = (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        return None
    spec = obj.get("spec") or {}
    cidrs = spec.get("podCIDRs")
    if not (isinstance(cidrs, list) and cidrs):
        cidrs = [spec["podCIDR"]] if isinstance(spec.get("podCIDR"), str) and spec["podCIDR"] else []
    return NodeFacts(name, tuple(str(c) for c in cidrs))


def _flannel_container(pod: Mapping[str, Any]) -> str | None:
    names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or [] if isinstance(c, dict)]
    if FLANNEL_CONTAINER in names:
        return FLANNEL_CONTAINER
    return names[0] if names and isinstance(names[0], str) else None


def _pod_facts(pod: Mapping[str, Any]) -> PodFacts:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or [] if isinstance(c, dict))
    container = _flannel_container(pod)
    state, restarts = str(status.get("phase") or ""), 0
    for cs in status.get("containerStatuses") or []:
        if not isinstance(cs, dict) or cs.get("name") != container:
            continue
        restarts = int(cs.get("restartCount") or 0)
        st = cs.get("state") or {}
        for key in ("waiting", "terminated"):
            if isinstance(st.get(key), dict):
                state = str(st[key].get("reason") or key.capitalize())
                break
        else:
            if "running" in st:
                state = "Running"
    return PodFacts(namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
                    node=(pod.get("spec") or {}).get("nodeName"), ready=ready, state=state, restarts=restarts)


def _last_line(text: str) -> str | None:
    """The last error line (klog ``E``/``F`` severity, or one that says error/failed), else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if _KLOG_ERROR.match(line) or _ERROR_WORDS.search(line)]
    chosen = errors[-1] if errors else lines[-1] if lines else None
    return chosen[:500] if chosen else None


async def gather(api: kubernetes.client.ApiClient, cluster_cidr: str | None = None, *,
                 timeout: float = 5.0) -> ClusterFacts:
    """Read what :func:`diagnose` needs. Read-only; every call bounded by ``timeout`` seconds.

    Raises :class:`ClusterUnreadable` when the API cannot be reached, refuses the
    credentials (401) or answers the Node list with a server error.
    """
    core = kubernetes.client.CoreV1Api(api)
    host = api.configuration.host
    bound = (timeout, timeout)
    notes: list[str] = []

    def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
        resp = call(*args, _preload_content=False, _request_timeout=bound, **kwargs)
        return bytes(resp.data)

    def get(what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Parsed JSON, or None with a note (403, 404, another error). Worker thread."""
        try:
            return json.loads(raw(call, *args, **kwargs))
        except ApiException as e:
            if e.status == 404:
                return None  # absent is an answer: the report says what it did not find
            notes.append(f"{what}: HTTP {e.status} {e.reason or ''}".rstrip()
                         + (" (check RBAC)" if e.status in (401, 403) else ""))
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            notes.append(f"{what}: {_reason(e)}")
        return None

    nodes_readable = True
    try:
        node_doc = json.loads(await asyncio.to_thread(raw, core.list_node))
    except ApiException as e:
        if e.status not in (403, 404):
            raise ClusterUnreadable(f"the Kubernetes API at {host} answered HTTP {e.status}"
                                    f" {e.reason or ''} to GET /api/v1/nodes".rstrip()) from e
        notes.append(f"nodes: HTTP {e.status} {e.reason or ''} (check RBAC: list nodes)".rstrip())
        node_doc, nodes_readable = None, False
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise ClusterUnreadable(f"cannot reach the Kubernetes API at {host}: {_reason(e)}") from e
    except ValueError as e:
        raise ClusterUnreadable(f"the Kubernetes API at {host} did not answer JSON: {e}") from e

    cm_calls = [asyncio.to_thread(get, f"ConfigMap {ns}/{name}", core.read_namespaced_config_map, name, ns)
                for ns, name in FLANNEL_CONFIGMAPS]
    pod_calls = [asyncio.to_thread(get, f"pods in {ns} ({FLANNEL_POD_LABEL})", core.list_namespaced_pod, ns,
                                   label_selector=FLANNEL_POD_LABEL)
                 for ns in dict.fromkeys(ns for ns, _ in FLANNEL_CONFIGMAPS)]
    resolution, *docs = await asyncio.gather(discover(api, cluster_cidr, timeout=timeout),
                                             *cm_calls, *pod_calls)
    cm_docs, pod_docs = docs[:len(cm_calls)], docs[len(cm_calls):]

    configmaps = []
    for (ns, name), doc in zip(FLANNEL_CONFIGMAPS, cm_docs, strict=True):
        if isinstance(doc, dict):
            text = (doc.get("data") or {}).get(NET_CONF_KEY)
            configmaps.append(ConfigMapFacts(ns, name, text if isinstance(text, str) else None))
    raw_pods = [p for doc in pod_docs for p in _items(doc)
                if ((p.get("metadata") or {}).get("labels") or {}).get("app") == "flannel"]
    pods = [_pod_facts(p) for p in raw_pods]

    def last_log(pod: Mapping[str, Any], facts: PodFacts) -> str | None:
        container = _flannel_container(pod)
        what = f"log of pod {facts.ref}"
        try:
            text = raw(core.read_namespaced_pod_log, facts.name, facts.namespace, container=container,
                       tail_lines=_LOG_TAIL).decode("utf-8", "replace")
            line = _last_line(text)
            if line is None and facts.restarts:
                # Just restarted: the reason is in the previous container's log.
                text = raw(core.read_namespaced_pod_log, facts.name, facts.namespace, container=container,
                           tail_lines=_LOG_TAIL, previous=True).decode("utf-8", "replace")
                line = _last_line(text)
            return line
        except ApiException as e:
            notes.append(f"{what}: HTTP {e.status} {e.reason or ''}".rstrip()
                         + (" (check RBAC: get pods/log)" if e.status == 403 else ""))
        except (urllib3.exceptions.HTTPError, OSError) as e:
            notes.append(f"{what}: {_reason(e)}")
        return None

    lines = await asyncio.gather(*(asyncio.to_thread(last_log, p, f) if not f.ready else _none()
                                   for p, f in zip(raw_pods, pods, strict=True)))
    pods = [PodFacts(f.namespace, f.name, f.node, f.ready, f.state, f.restarts, line)
            for f, line in zip(pods, lines, strict=True)]
    nodes = [n for n in map(_node_facts, _items(node_doc)) if n is not None]
    return ClusterFacts(resolution=resolution, configmaps=tuple(configmaps), nodes=tuple(nodes),
                        pods=tuple(pods), nodes_readable=nodes_readable, notes=tuple(notes))


async def _none() -> None:
    return None


# --- command line -------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``doctor`` to a ``flannel-guard`` command line."""
    p = subparsers.add_parser(
        "doctor", help="diagnose a live cluster, read-only (exit 0 healthy, 1 findings, 2 unreadable)",
        description="Read the cluster-cidr sources, kube-controller-manager's allocation, the flannel"
                    " ConfigMaps, every Node's podCIDRs and the flannel pods; print what is wrong and"
                    " the exact fix. Changes nothing.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--kubeconfig", type=Path, default=None,
                     help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    src.add_argument("--in-cluster", action="store_true", help="use the pod's service account")
    p.add_argument("--output", "-o", choices=["text", "json"], default="text")
    p.add_argument("--cluster-cidr", default=env_default("cluster_cidr"),
                   help="the cluster-cidr to check against, overriding every source (one CIDR or IPv4,IPv6)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds for each API call (default 5)")


def _unreadable(args: argparse.Namespace, message: str) -> int:
    print(f"flannel-guard doctor: cannot read the cluster: {message}", file=sys.stderr)
    if args.output == "json":
        print(json.dumps({"healthy": False, "exitCode": EXIT_UNREADABLE, "error": message}, indent=2))
    return EXIT_UNREADABLE


def run(args: argparse.Namespace) -> int:
    """Run ``doctor`` with parsed arguments; print the report; return the exit code."""
    if args.cluster_cidr:
        try:
            parse_cidr_list(args.cluster_cidr)
        except CidrError as e:
            print(f"flannel-guard doctor: --cluster-cidr: {e}", file=sys.stderr)
            return EXIT_UNREADABLE
    try:
        api = api_client(args.kubeconfig, args.in_cluster)
    except Exception as e:  # kubernetes.config raises ConfigException, OSError, yaml and key errors
        why = " ".join(str(e).split())[:200]
        return _unreadable(args, f"no usable kubeconfig ({type(e).__name__}: {why})")
    try:
        facts = asyncio.run(gather(api, args.cluster_cidr, timeout=args.timeout))
    except ClusterUnreadable as e:
        return _unreadable(args, str(e))
    finally:
        api.close()
    report = diagnose(facts)
    print(render_json(report) if args.output == "json" else render_text(report))
    return report.exit_code


def main(argv: Sequence[str]) -> int:
    """``flannel-guard doctor ...`` on its own parser (tests; the real CLI wires :func:`add_parser`)."""
    parser = argparse.ArgumentParser(prog="flannel-guard")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))

"""What every section of the diagnosis shares: the target cluster-cidr, the parsed nodes, fix builders.

:class:`Context` is built once from :class:`~webhook.doctor.facts.ClusterFacts`
and read by the pure sections; none of them changes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from webhook.core.cidr import IPNetwork
from webhook.core.discovery import CidrSource, Resolution, SourceKind
from webhook.core.nodeindex import NodeCidrIndex
from webhook.core.nodemodel import networks_of
from webhook.core.rules.findings import ClusterView, RuleSettings, Severity
from webhook.core.rules.flannel import parse_net_conf
from webhook.doctor.facts import ClusterFacts, ConfigMapFacts
from webhook.doctor.report import DoctorFinding, Fix

__all__ = [
    "FLANNEL_CONTAINER",
    "FLANNEL_POD_LABEL",
    "KCM_MANIFEST",
    "NO_POD_CIDR_LOG",
    "Context",
    "Section",
    "cidrs_text",
    "finding",
    "flannel_networks",
    "kcm_flags_fix",
    "kube_proxy_fix",
    "kubeadm_fix",
    "node_networks",
    "of_family",
    "patch_text",
]

FLANNEL_POD_LABEL = "app=flannel"
FLANNEL_CONTAINER = "kube-flannel"
KCM_MANIFEST = "/etc/kubernetes/manifests/kube-controller-manager.yaml"
#: flannel's log line for the seed's failure (pkg/subnet/kube/kube.go: "node %q pod cidr not assigned").
NO_POD_CIDR_LOG = "pod cidr not assigned"


def cidrs_text(nets: Iterable[IPNetwork]) -> str:
    return ",".join(str(n) for n in nets)


def of_family(nets: Sequence[IPNetwork] | None, version: int) -> IPNetwork | None:
    return next((n for n in nets or () if n.version == version), None)


def node_networks(pod_cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    """A Node's podCIDRs as the networks they occupy: the one reading of webhook/core/nodemodel.py
    (a podCIDR with host bits set occupies its network; the Node rule reports it as invalid)."""
    return networks_of(pod_cidrs)


def patch_text(name: str, cidrs: Sequence[IPNetwork]) -> tuple[str, dict[str, Any]]:
    patch = {"spec": {"podCIDR": str(cidrs[0]), "podCIDRs": [str(c) for c in cidrs]}}
    return f"kubectl patch node {name} -p '{json.dumps(patch, separators=(',', ':'))}'", patch


def flannel_networks(cm: ConfigMapFacts) -> tuple[IPNetwork, ...] | None:
    """The networks flannel would use from this ConfigMap, None when it would refuse it."""
    if cm.net_conf is None:
        return None
    conf = parse_net_conf(cm.net_conf).conf
    if conf is None:
        return None
    nets = [p.network for p, on in ((conf.network, conf.enable_ipv4), (conf.ipv6_network, conf.enable_ipv6))
            if p is not None and on]
    return tuple(nets) or None


def _target(res: Resolution, cms: Sequence[ConfigMapFacts],
            nodes: NodeCidrIndex) -> tuple[tuple[IPNetwork, ...] | None, str]:
    """The cluster-cidr the fixes aim at, and where it comes from.

    The effective source's, unless some node's podCIDR lies outside it while another source's
    value holds them all: a podCIDR cannot move, a setting can, so that value is the one every
    fix aims at (changing the setting makes the nodes valid again; re-registering them would
    not be needed). The ``--cluster-cidr`` flag is the operator's word and is never overruled.
    """
    if res.effective is not None:
        home = _nodes_home(res, nodes)
        if home is not None:
            return home.networks, (f"{home.origin}: it holds every node's podCIDR, {res.effective.origin}"
                                   f" ({res.effective.describe()}) does not")
        return res.effective.networks, res.effective.origin
    for cm in cms:
        nets = flannel_networks(cm)
        if nets:
            return nets, f"flannel ConfigMap {cm.ref} net-conf.json Network"
    return None, "nowhere"


def _nodes_home(res: Resolution, nodes: NodeCidrIndex) -> CidrSource | None:
    """Another source whose value holds every node's podCIDR, when the effective one does not."""
    effective = res.effective
    if effective is None or effective.kind is SourceKind.FLAG or not len(nodes):
        return None
    if not nodes.outside(effective.networks, limit=0)[0]:
        return None
    families = {n.version for n in effective.networks}
    for s in res.sources:
        if (s.networks and not s.error and s.networks != effective.networks
                and {n.version for n in s.networks} == families
                and not nodes.outside(s.networks, limit=0)[0]):
            return s
    return None


def kcm_flags_fix(flags: dict[str, str], remove: Sequence[str] = ()) -> Fix:
    shown = " ".join(f"--{k}={v}" for k, v in flags.items())
    text = (f"on every control-plane node, in {KCM_MANIFEST} set {shown} in spec.containers[0].command"
            " (the kubelet restarts the static pod)")
    if remove:
        text += f"; remove {' '.join('--' + r for r in remove)}"
    return Fix("set-controller-manager-flags", text,
               {"manifest": KCM_MANIFEST, "flags": dict(flags), "remove": list(remove)})


def kubeadm_fix(value: str) -> Fix:
    return Fix("set-kubeadm-pod-subnet",
               "kubectl -n kube-system edit configmap kubeadm-config: in ClusterConfiguration set"
               f" networking.podSubnet: {value} (so that kubeadm upgrade and new control-plane nodes keep"
               " --cluster-cidr)",
               {"namespace": "kube-system", "configMap": "kubeadm-config", "podSubnet": value})


def kube_proxy_fix(value: str) -> Fix:
    return Fix("set-kube-proxy-cluster-cidr",
               f"kubectl -n kube-system edit configmap kube-proxy: in config.conf set clusterCIDR: {value},"
               " then `kubectl -n kube-system rollout restart daemonset kube-proxy`",
               {"namespace": "kube-system", "configMap": "kube-proxy", "clusterCIDR": value})


def finding(severity: Severity, code: str, subject: str, summary: str, detail: str = "",
            fixes: Iterable[Fix] = (), *, subjects: Iterable[str] = (), caused_by: str = "") -> DoctorFinding:
    return DoctorFinding(severity, code, subject, summary, detail, tuple(fixes), subjects=tuple(subjects),
                         caused_by=caused_by)


@dataclass
class Section:
    """What one section found: findings (in its own order) and notes for the report."""

    findings: list[DoctorFinding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, severity: Severity, code: str, subject: str, summary: str, detail: str = "",
            fixes: Iterable[Fix] = (), **kw: Any) -> None:
        self.findings.append(finding(severity, code, subject, summary, detail, fixes, **kw))


class Context:
    """The facts and what is derived from them once: the target cluster-cidr, parsed nodes, the view."""

    def __init__(self, facts: ClusterFacts, settings: RuleSettings) -> None:
        self.facts = facts
        self.res = facts.resolution
        self.settings = settings
        self.kcm_found = any(s.kind is SourceKind.CONTROLLER_MANAGER for s in self.res.sources)
        self.index = NodeCidrIndex()
        self.parsed: dict[str, tuple[IPNetwork, ...]] = {}
        for n in facts.nodes:
            nets = node_networks(n.pod_cidrs)
            self.parsed[n.name] = nets
            self.index.set(n.name, nets)
        self.target, self.origin = _target(self.res, facts.configmaps, self.index)
        self.view = ClusterView(cluster_cidr=self.target, cidr_source=self.origin, nodes=self.index,
                                mask_v4=self.res.mask_v4, mask_v6=self.res.mask_v6,
                                disputed=not self.res.agree)
        self.nodes_by_name = {n.name: n for n in facts.nodes}

    @property
    def target_text(self) -> str:
        return cidrs_text(self.target or ())

    def flannel_conf(self) -> Any:
        """The first flannel ConfigMap's parsed net-conf.json (what the DaemonSet reads), or None."""
        for cm in self.facts.configmaps:
            if cm.net_conf is not None:
                conf = parse_net_conf(cm.net_conf).conf
                if conf is not None:
                    return conf
        return None

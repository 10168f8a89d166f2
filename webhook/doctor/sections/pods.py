"""The flannel pods that are not Ready, grouped by what their log says is wrong.

Pods that fail for one cause get one finding and one restart, not one per pod.
"""

from __future__ import annotations

from collections import defaultdict

from webhook.core.nodeargs import distribution_of
from webhook.core.rules.findings import Severity
from webhook.doctor.facts import PodFacts
from webhook.doctor.klog import kind_of
from webhook.doctor.model import FLANNEL_CONTAINER, FLANNEL_POD_LABEL, Context, Section
from webhook.doctor.report import Fix

__all__ = ["CANAL_POD_LABEL", "pods"]

#: Canal's DaemonSet pods (RKE2's rke2-canal-*, upstream canal-*): flannel runs in their
#: kube-flannel container (webhook/doctor/collect.py lists them too).
CANAL_POD_LABEL = "k8s-app=canal"

_NAMED = 5  # up to this many pods are deleted by name, more by label


def _kind(p: PodFacts) -> str:
    for line in (p.last_log_line, *p.log_lines):
        kind = kind_of(line) if line else None
        if kind and kind != "interface":
            return kind
    return "unknown"


def _restart(namespace: str, group: list[PodFacts]) -> Fix:
    if len(group) == 1:
        p = group[0]
        return Fix("restart-pod", f"after the fixes above: kubectl -n {p.namespace} delete pod {p.name}"
                   " (the DaemonSet starts a new one at once instead of waiting out the CrashLoopBackOff"
                   " backoff)", {"namespace": p.namespace, "pod": p.name})
    names = [p.name for p in group]
    target = " ".join(names) if len(names) <= _NAMED else f"-l {FLANNEL_POD_LABEL}"
    return Fix("restart-pods", f"after the fixes above, one restart for all of them: kubectl -n {namespace}"
               f" delete pod {target} (the DaemonSet starts new ones at once)",
               {"namespace": namespace, "pods": names, "selector": FLANNEL_POD_LABEL})


_CAUSES = {
    "no-pod-cidr": ("its node has no podCIDR", "their nodes have no podCIDR", "NodeWithoutPodCIDR"),
    "network-mismatch": ("flannel's Network does not contain the node's podCIDR",
                         "flannel's Network does not contain their nodes' podCIDRs", "NetworkMismatch"),
    "br-netfilter": ("the br_netfilter kernel module is not loaded on its node",
                     "the br_netfilter kernel module is not loaded on their nodes", "BrNetfilterMissing"),
    "api-timeout": ("it cannot reach the kube-apiserver Service",
                    "they cannot reach the kube-apiserver Service", "ApiServiceUnreachable"),
}


def _host_findings(out: Section, kind: str, group: list[PodFacts]) -> None:
    """What only the node can mend, named once for all the nodes it concerns."""
    nodes = sorted({p.node for p in group if p.node})
    where = ", ".join(nodes) or "their nodes"
    line = next((ln for p in group for ln in (p.last_log_line, *p.log_lines)
                 if ln and kind_of(ln) == kind), "")
    if kind == "br-netfilter":
        out.add(Severity.ERROR, "BrNetfilterMissing", "nodes" if len(nodes) > 1 else f"node {where}",
                f"flannel exits on {where}: the br_netfilter kernel module is not loaded"
                " (/proc/sys/net/bridge/bridge-nf-call-iptables is missing).",
                f"flannel's log: {line} (flannel main.go checks it unless EnableNFTables; kubeadm stopped"
                " checking it in 1.30, flannel#2068).",
                [Fix("host", f"on {where}: modprobe br_netfilter && echo br_netfilter >"
                     " /etc/modules-load.d/br_netfilter.conf", {"nodes": nodes})],
                subjects=[f"node {n}" for n in nodes])
    elif kind == "api-timeout":
        out.add(Severity.ERROR, "ApiServiceUnreachable", "nodes" if len(nodes) > 1 else f"node {where}",
                f"suspect: flannel on {where} cannot reach the kube-apiserver through its Service IP.",
                f"flannel's log: {line}. The Service IP is programmed by kube-proxy: it is not running on"
                " that node, or its mode does not match the node (flannel#1409, #1702). Only the host can"
                " tell.",
                [Fix("manual", f"kubectl -n kube-system get pods -l k8s-app=kube-proxy -o wide | grep -E"
                     f" '{'|'.join(nodes) or '.'}'; on the node: iptables-save | grep KUBE-SERVICES or"
                     " nft list ruleset | grep kube", {"nodes": nodes})],
                subjects=[f"node {n}" for n in nodes])


def pods(ctx: Context) -> tuple[list[PodFacts], Section]:
    out = Section()
    bad = [p for p in ctx.facts.pods if not p.ready]
    k3s = any((d := distribution_of(s)) and d[0] == "k3s" for s in ctx.res.sources)
    if not ctx.facts.pods and k3s:
        out.notes.append("k3s runs flannel inside the k3s process, so there are no flannel pods: its health"
                         " is each Node's Ready condition and flannel.alpha.coreos.com annotations (NODES)")
    elif not ctx.facts.pods:
        namespaces = " and ".join(dict.fromkeys(ns for ns, _ in ctx.facts.flannel_configmaps))
        out.notes.append(f"no flannel pods found (label {FLANNEL_POD_LABEL} in {namespaces}, or"
                         f" {CANAL_POD_LABEL} in kube-system)")
    groups: dict[tuple[str, str], list[PodFacts]] = defaultdict(list)
    for p in bad:
        groups[p.namespace, _kind(p)].append(p)
    for (namespace, kind), group in groups.items():
        _host_findings(out, kind, group)
        if kind in _CAUSES:
            one, many, cause = _CAUSES[kind]
            fixes = [_restart(namespace, group)]
        else:
            one, many, cause = "", "", ""
            fixes = [Fix("manual", f"kubectl -n {p.namespace} logs {p.name} -c {FLANNEL_CONTAINER}"
                         f" --previous; kubectl -n {p.namespace} describe pod {p.name}") for p in group]
            fixes.append(_restart(namespace, group))
        if len(group) == 1:
            p = group[0]
            where = f" on {p.node}" if p.node else ""
            summary = f"flannel pod {p.ref}{where} is not Ready ({p.state or 'unknown state'}"
            summary += f", {p.restarts} restarts)." if p.restarts else ")."
            line = p.last_log_line
            if one:
                detail = f"{one[0].upper()}{one[1:]}"
                if kind == "no-pod-cidr":
                    detail += f" (see node {p.node})"
                detail += f". Last log line: {line}" if line else "."
            else:
                detail = f"Last log line: {line}" if line else "Its log could not be read or is empty."
            out.add(Severity.ERROR, "FlannelPodNotReady", f"pod {p.ref}", summary, detail, fixes,
                    caused_by=cause)
            continue
        names = ", ".join(p.name for p in group[:_NAMED]) + (f" and {len(group) - _NAMED} more"
                                                            if len(group) > _NAMED else "")
        why = f": {many}" if many else ""
        lines = list(dict.fromkeys(p.last_log_line for p in group if p.last_log_line))
        detail = f"Last log line{'s' if len(lines) > 1 else ''}: " + " | ".join(lines[:3]) if lines else ""
        out.add(Severity.ERROR, "FlannelPodNotReady", f"{len(group)} flannel pods in {namespace}",
                f"{len(group)} flannel pods in {namespace} are not Ready{why} ({names}).", detail, fixes,
                subjects=[f"pod {p.ref}" for p in group], caused_by=cause)
    return bad, out

"""What the kubelet and the CNI plugins reported: Node conditions, sandbox events, pod IPs.

The texts matched are the writers' own: the kubelet's Ready condition "container
runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady ..."
(``pkg/kubelet/kubelet.go``; containerd says "cni plugin not initialized", dockershim
"cni config uninitialized"); flannel's own condition ``NetworkUnavailable`` with reason
``FlannelIsUp`` (flannel ``pkg/subnet/kube/kube.go``); the kubelet's
``FailedCreatePodSandBox`` events carrying the CNI plugin's error: flannel-io/cni-plugin
``flannel.go`` ("loadFlannelSubnetEnv failed" / "failed to load flannel 'subnet.env' file"),
libcni ``pkg/invoke/find.go`` ("failed to find plugin %q in path %s"),
containernetworking/plugins ``plugins/main/bridge/bridge.go`` ("%q already has an IP address
different from %v") and ``plugins/ipam/host-local/backend/allocator/allocator.go`` ("no IP
addresses available in range set: %s").
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict

from webhook.core.rules.findings import Severity
from webhook.doctor.facts import EventFacts
from webhook.doctor.model import Context, Section
from webhook.doctor.report import Fix

__all__ = ["SANDBOX_REASON", "conditions", "events", "pod_ips"]

#: The kubelet's event reason for a sandbox that failed (pkg/kubelet/events/event.go).
SANDBOX_REASON = "FailedCreatePodSandBox"
_CNI_NOT_READY = re.compile(r"NetworkPluginNotReady|cni config uninitialized|cni plugin not initialized")
_EVENT_KINDS = {
    "subnet-env": re.compile(r"subnet\.env"),
    "plugin-missing": re.compile(r'failed to find plugin "([^"]+)"'),
    "stale-bridge": re.compile(r'"?(\w+)"? already has an IP address different from (\S+)'),
    "ipam-full": re.compile(r"no IP addresses available in range set: (\S+)"),
}
_SHOWN = 5


def _names(nodes: list[str]) -> str:
    return ", ".join(nodes[:_SHOWN]) + (f" and {len(nodes) - _SHOWN} more" if len(nodes) > _SHOWN else "")


def _subject(nodes: list[str]) -> str:
    return f"node {nodes[0]}" if len(nodes) == 1 else f"{len(nodes)} nodes"


def _flannel_state(ctx: Context, node: str) -> str:
    pods = [p for p in ctx.facts.pods if p.node == node]
    if not pods:
        return "missing"
    return "ready" if any(p.ready for p in pods) else "not-ready"


def conditions(ctx: Context) -> Section:
    out = Section()
    cni: dict[str, list[str]] = defaultdict(list)  # flannel state -> nodes
    messages: dict[str, str] = {}
    unavailable: list[str] = []
    for n in sorted(ctx.facts.nodes, key=lambda n: n.name):
        ready = n.condition("Ready")
        if ready is not None and ready.status != "True" and _CNI_NOT_READY.search(ready.message):
            state = _flannel_state(ctx, n.name)
            cni[state].append(n.name)
            messages.setdefault(state, ready.message)
        net = n.condition("NetworkUnavailable")
        if net is not None and net.status == "True":
            unavailable.append(n.name)
    for state, nodes in sorted(cni.items()):
        summary = f"{_subject(nodes)} NotReady: the kubelet finds no working CNI network ({_names(nodes)})."
        detail = f"The kubelet's Ready condition: {messages[state]}"
        if state == "missing":
            detail += (". No flannel pod runs there: the DaemonSet does not schedule on it (taints,"
                       " nodeSelector).")
            fixes = [Fix("manual", "kubectl -n kube-flannel describe daemonset kube-flannel-ds; compare its"
                         f" tolerations and nodeSelector with `kubectl describe node {nodes[0]}`")]
            cause = ""
        elif state == "not-ready":
            detail += ". The flannel pod there is not Ready: it writes the CNI config when it comes up."
            fixes = [Fix("manual", "fix the flannel pods first (see their finding)")]
            cause = "FlannelPodNotReady"
        else:
            detail += (". flannel runs there: the CNI config (/etc/cni/net.d/10-flannel.conflist) or the"
                       " plugins in /opt/cni/bin are missing (flannel#1730, #2301, #1432).")
            fixes = [Fix("host", f"on {_names(nodes)}: ls /etc/cni/net.d /opt/cni/bin; install the CNI"
                         " plugins (bridge, host-local, portmap, loopback) from the"
                         " containernetworking/plugins release into /opt/cni/bin, then restart the kubelet",
                         {"nodes": nodes})]
            cause = ""
        out.add(Severity.ERROR, "CNINotReady", _subject(nodes), summary, detail, fixes,
                subjects=[f"node {n}" for n in nodes], caused_by=cause)
    if unavailable:
        out.add(Severity.WARNING, "FlannelNotUp", _subject(unavailable),
                f"NetworkUnavailable is True on {_names(unavailable)}: flannel has not come up there.",
                "flannel sets NetworkUnavailable=False with reason FlannelIsUp when it starts on a node.",
                [Fix("manual", "look at the flannel pod on those nodes (see the flannel pods' findings)")],
                subjects=[f"node {n}" for n in unavailable], caused_by="FlannelPodNotReady")
    return out


def _classify(e: EventFacts) -> tuple[str, str] | None:
    for kind, pattern in _EVENT_KINDS.items():
        m = pattern.search(e.message)
        if m:
            return kind, m.group(1) if m.groups() else ""
    return None


def events(ctx: Context) -> Section:
    out = Section()
    by_kind: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    sample: dict[str, str] = {}
    for e in ctx.facts.events:
        if e.reason != SANDBOX_REASON:
            continue
        hit = _classify(e)
        if hit is None:
            continue
        kind, value = hit
        by_kind[kind][e.node or "?"].add(value)
        sample.setdefault(kind, e.message)
    for kind, per_node in by_kind.items():
        nodes = sorted(per_node)
        subjects = [f"node {n}" for n in nodes]
        quoted = f"The kubelet's event: {sample[kind][:400]}"
        if kind == "subnet-env":
            down = [n for n in nodes if _flannel_state(ctx, n) != "ready"]
            detail = quoted + (f". flannel is not running on {_names(down)}: it writes"
                               " /run/flannel/subnet.env when it has its lease." if down else
                               ". flannel runs there: /run/flannel is not the host's, or a stale pod.")
            out.add(Severity.ERROR, "SubnetEnvMissing", _subject(nodes),
                    f"pods on {_names(nodes)} get no network: /run/flannel/subnet.env is missing"
                    " (flannel#2253, #2232, #1399).", detail,
                    [Fix("manual", "fix the flannel pod on those nodes first; the sandboxes are retried")],
                    subjects=subjects, caused_by="FlannelPodNotReady" if down else "")
        elif kind == "plugin-missing":
            plugins = sorted({p for v in per_node.values() for p in v})
            out.add(Severity.ERROR, "CNIPluginMissing", _subject(nodes),
                    f"the CNI plugin(s) {', '.join(plugins)} are missing on {_names(nodes)}"
                    " (flannel#1730, #2301, #851).", quoted,
                    [Fix("host", f"on {_names(nodes)}: install the containernetworking/plugins release into"
                         f" /opt/cni/bin ({', '.join(plugins)} missing)",
                         {"nodes": nodes, "plugins": plugins})],
                    subjects=subjects)
        elif kind == "stale-bridge":
            out.add(Severity.ERROR, "StaleCNIBridge", _subject(nodes),
                    f"cni0 on {_names(nodes)} still has the address of an earlier podCIDR (the node rejoined"
                    " with another one: flannel#1060, #883, #1850).", quoted,
                    [Fix("host", f"on {_names(nodes)}: ip link delete cni0; ip link delete flannel.1; then"
                         " `kubectl -n kube-flannel delete pod -l app=flannel --field-selector"
                         " spec.nodeName=<node>`", {"nodes": nodes})],
                    subjects=subjects)
        elif kind == "ipam-full":
            out.add(Severity.ERROR, "IPAMExhausted", _subject(nodes),
                    f"host-local IPAM on {_names(nodes)} has no address left: addresses of deleted pods were"
                    " not released, or the podCIDR changed (flannel#2264).", quoted,
                    [Fix("host", f"on {_names(nodes)} (drained): rm -rf /var/lib/cni/networks/cbr0 and"
                         " restart the container runtime", {"nodes": nodes})],
                    subjects=subjects)
    return out


def pod_ips(ctx: Context) -> Section:
    """Pods whose IP lies outside their node's podCIDR: the node's network predates its podCIDR."""
    out = Section()
    stale: dict[str, list[str]] = defaultdict(list)
    for p in ctx.facts.workload_pods:
        nets = ctx.parsed.get(p.node)
        if not nets:
            continue
        for text in p.ips:
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                continue
            family = [n for n in nets if n.version == ip.version]
            if family and not any(ip in n for n in family):
                stale[p.node].append(f"{p.namespace}/{p.name} ({text})")
                break
    for node, pods in sorted(stale.items()):
        nets = ",".join(str(n) for n in ctx.parsed[node])
        out.add(Severity.ERROR, "PodIPOutsideNodeCIDR", f"node {node}",
                f"{len(pods)} pod(s) on node {node} have IPs outside its podCIDR {nets}:"
                f" {', '.join(pods[:_SHOWN])}.",
                "The node's cni0 and host-local state predate its podCIDR (it rejoined, or its podCIDR was"
                " re-assigned): these pods are unreachable from other nodes (flannel#1060, #883, #2264).",
                [Fix("host", f"on {node} (drained): ip link delete cni0; ip link delete flannel.1;"
                     f" rm -rf /var/lib/cni/networks/cbr0; then `kubectl uncordon {node}` and delete the"
                     " pods",
                     {"node": node, "pods": pods})])
    return out

"""What flannel wrote on the Nodes (``flannel.alpha.coreos.com/*``) and its settings against the cluster's.

flannel's kube subnet manager writes ``public-ip``, ``backend-type`` and
``backend-data`` on every Node it runs on (``pkg/subnet/kube/kube.go``, names from
``pkg/subnet/kube/annotations.go``) and honours ``public-ip-overwrite``. The vxlan
backend's ``backend-data`` is ``{"VNI":1,"VtepMAC":"..."}`` (``pkg/backend/vxlan/vxlan_network.go``
vxlanLeaseAttrs); on Windows the VNI must be >= 4096 (``vxlan_windows.go``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable

from webhook.core.rules.findings import Severity
from webhook.doctor.facts import NodeFacts
from webhook.doctor.model import Context, Section
from webhook.doctor.report import Fix

__all__ = ["flannel_annotations", "flannel_settings", "nodes_announcing_elsewhere", "nodes_sharing_public_ip",
           "nodes_to_read_logs_of"]

_WINDOWS_MIN_VNI = 4096
_DEFAULT_VNI = 1


def _internal_ip(n: NodeFacts) -> str:
    return next((a for t, a in n.addresses if t == "InternalIP" and ":" not in a), "")


def nodes_sharing_public_ip(nodes: Iterable[NodeFacts]) -> dict[str, list[str]]:
    """public-ip -> the nodes that share it (two or more), from flannel's annotation."""
    by_ip: dict[str, list[str]] = defaultdict(list)
    for n in nodes:
        ip = n.annotation("public-ip")
        if ip:
            by_ip[ip].append(n.name)
    return {ip: sorted(names) for ip, names in by_ip.items() if len(names) > 1}


def nodes_announcing_elsewhere(nodes: Iterable[NodeFacts]) -> list[tuple[str, str, str]]:
    """(node, public-ip, its addresses) for nodes whose flannel announces none of their addresses."""
    out = []
    for n in sorted(nodes, key=lambda n: n.name):
        ip, overwrite = n.annotation("public-ip"), n.annotation("public-ip-overwrite")
        addresses = {a for _, a in n.addresses}
        if ip and addresses and ip not in addresses and not overwrite:
            out.append((n.name, ip, ", ".join(sorted(addresses))))
    return out


def nodes_to_read_logs_of(nodes: Iterable[NodeFacts]) -> set[str]:
    """The nodes whose flannel start-up log (its interface choice) a public-ip finding quotes."""
    listed = list(nodes)
    shared = {name for names in nodes_sharing_public_ip(listed).values() for name in names}
    return shared | {name for name, _, _ in nodes_announcing_elsewhere(listed)}


def _vni(data: str) -> int | None:
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, RecursionError):
        return None
    value = doc.get("VNI") if isinstance(doc, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _configured_vni(ctx: Context) -> int | None:
    """Backend.VNI of the first flannel ConfigMap (flannel's JSON keys are case-insensitive)."""
    for cm in ctx.facts.configmaps:
        try:
            doc = json.loads(cm.net_conf or "")
        except (json.JSONDecodeError, RecursionError):
            continue
        backend = next((v for k, v in doc.items() if k.lower() == "backend"), None) if isinstance(doc, dict) \
            else None
        if isinstance(backend, dict):
            vni = next((v for k, v in backend.items() if k.lower() == "vni"), None)
            return vni if isinstance(vni, int) and not isinstance(vni, bool) else _DEFAULT_VNI
    return None


def _interface_lines(ctx: Context, names: Iterable[str]) -> list[str]:
    wanted = set(names)
    return [f"{p.node}: {line}" for p in ctx.facts.pods if p.node in wanted
            for line in p.log_lines if line.startswith("Using interface with name")]


def _public_ip(ctx: Context, out: Section) -> None:
    for ip, names in sorted(nodes_sharing_public_ip(ctx.facts.nodes).items()):
        fixes = [Fix("manual", "in the kube-flannel DaemonSet (kubectl -n kube-flannel edit daemonset"
                     " kube-flannel-ds) add --iface=<the interface of the nodes' own network> (or"
                     " --iface-regex / --iface-can-reach) to the kube-flannel container's args")]
        for name in names:
            own = _internal_ip(ctx.nodes_by_name[name])
            if own and own != ip:
                key = "flannel.alpha.coreos.com/public-ip-overwrite"
                fixes.append(Fix("annotate-node", f"kubectl annotate node {name} {key}={own} --overwrite",
                                 {"node": name, "annotation": key, "value": own},
                                 alternative_to="manual"))
        seen = _interface_lines(ctx, names)
        detail = ("Each node's flannel announces this address as its VXLAN endpoint, so pods on these nodes"
                  " cannot reach each other. Typical of Vagrant/VirtualBox, whose NAT interface is 10.0.2.15"
                  " on every VM (flannel#98, #313, #1192).")
        if seen:
            detail += " flannel's log: " + " | ".join(seen[:4])
        out.add(Severity.ERROR, "PublicIPShared", "nodes",
                f"{len(names)} nodes share flannel's public-ip {ip} ({', '.join(names[:5])}).", detail, fixes,
                subjects=[f"node {n}" for n in names])
    for n in sorted(ctx.facts.nodes, key=lambda n: n.name):
        overwrite = n.annotation("public-ip-overwrite")
        if overwrite:
            out.notes.append(f"node {n.name}: flannel.alpha.coreos.com/public-ip-overwrite={overwrite}"
                             " (set by hand: flannel announces it instead of the interface's address)")
    elsewhere = nodes_announcing_elsewhere(ctx.facts.nodes)
    if not elsewhere:
        return
    first, ip, addresses = elsewhere[0]
    if len(elsewhere) == 1:
        subject = f"node {first}"
        summary = (f"suspect: flannel on node {first} announces public-ip {ip}, which is none of the node's"
                   f" addresses ({addresses}).")
    else:
        shown = ", ".join(f"{n} ({i})" for n, i, _ in elsewhere[:5])
        subject = f"{len(elsewhere)} nodes"
        summary = (f"suspect: flannel on {len(elsewhere)} nodes announces a public-ip that is none of the"
                   f" node's addresses: {shown}.")
    out.add(Severity.WARNING, "PublicIPNotNodeAddress", subject, summary,
            "flannel picked another interface than the node's (flannel#712, #981, #1978), or the address is"
            " NATed; other nodes' VXLAN packets then go nowhere. Only the host can tell whether UDP 8472 is"
            " reachable there." + "".join(f" flannel's log: {line}" for line in
                                          _interface_lines(ctx, [n for n, _, _ in elsewhere])[:4]),
            [Fix("manual", f"on {first}: ip -o addr | grep {ip}; set --iface in the kube-flannel DaemonSet,"
                 " or annotate flannel.alpha.coreos.com/public-ip-overwrite=<reachable address>")],
            subjects=[f"node {n}" for n, _, _ in elsewhere])


def _backend(ctx: Context, out: Section) -> None:
    conf = ctx.flannel_conf()
    want = conf.backend_type.lower() if conf is not None else ""
    types: dict[str, list[str]] = defaultdict(list)
    vnis: dict[int, list[str]] = defaultdict(list)
    for n in sorted(ctx.facts.nodes, key=lambda n: n.name):
        kind = n.annotation("backend-type")
        if kind:
            types[kind.lower()].append(n.name)
        vni = _vni(n.annotation("backend-data")) if kind.lower() == "vxlan" else None
        if vni is not None:
            vnis[vni].append(n.name)
            if n.os == "windows" and vni < _WINDOWS_MIN_VNI:
                out.add(Severity.ERROR, "WindowsVNITooLow", f"node {n.name}",
                        f"Windows node {n.name} runs vxlan with VNI {vni}: flannel on Windows requires a VNI"
                        f" >= {_WINDOWS_MIN_VNI}.",
                        "flannel's vxlan_windows.go refuses it (k3s#9295, flannel#765).",
                        [Fix("manual", "set \"Backend\": {\"Type\": \"vxlan\", \"VNI\":"
                             f" {_WINDOWS_MIN_VNI}}} in net-conf.json for every node, then restart the"
                             " flannel"
                             " DaemonSets")])
    stale = {t: names for t, names in types.items() if want and t != want}
    if len(types) > 1 or stale:
        shown = "; ".join(f"{t} on {', '.join(v[:5])}" for t, v in sorted(types.items()))
        out.add(Severity.ERROR, "BackendMismatch", "nodes",
                f"flannel's backend differs between nodes ({shown})"
                + (f"; net-conf.json says {want}." if want else "."),
                "Nodes on different backends cannot carry each other's pod traffic (flannel#517). A node"
                " keeps the backend-type of the flannel that last ran there.",
                [Fix("manual", "make net-conf.json Backend.Type the one backend, then `kubectl -n"
                     " kube-flannel rollout restart daemonset kube-flannel-ds` (and any Windows flannel"
                     " DaemonSet)")],
                subjects=[f"node {n}" for names in stale.values() for n in names])
    configured = _configured_vni(ctx) if want == "vxlan" else None
    if len(vnis) > 1 or (configured is not None and vnis and set(vnis) != {configured}):
        shown = "; ".join(f"VNI {v} on {', '.join(names[:5])}" for v, names in sorted(vnis.items()))
        out.add(Severity.ERROR, "VNIMismatch", "nodes",
                f"the vxlan VNI differs between nodes ({shown})"
                + (f"; net-conf.json says {configured}." if configured is not None else "."),
                "VXLAN packets of one VNI are dropped by nodes on another (flannel#765).",
                [Fix("manual", "one Backend.VNI in every flannel ConfigMap (>= 4096 when Windows nodes"
                     " join), then restart the flannel DaemonSets")])


def flannel_annotations(ctx: Context) -> Section:
    out = Section()
    _public_ip(ctx, out)
    _backend(ctx, out)
    return out


def flannel_settings(ctx: Context) -> Section:
    """EnableNFTables against kube-proxy's mode; dual-stack with IPv6 listed first."""
    out = Section()
    conf = ctx.flannel_conf()
    mode = (ctx.facts.kube_proxy_mode or "").lower()
    if conf is not None and ctx.facts.kube_proxy_mode is not None:
        nft_proxy = mode == "nftables"
        if conf.enable_nftables != nft_proxy:
            out.add(Severity.WARNING, "NFTablesMismatch", "flannel ConfigMap",
                    f"flannel's EnableNFTables is {str(conf.enable_nftables).lower()} but kube-proxy runs in"
                    f" {mode or 'iptables (default)'} mode.",
                    "flannel's documentation asks for EnableNFTables to match kube-proxy's mode: mixed"
                    " iptables and nftables rules drop or masquerade pod traffic (flannel#2068, #2166).",
                    [Fix("manual", f"set \"EnableNFTables\": {str(nft_proxy).lower()} in net-conf.json, then"
                         " `kubectl -n kube-flannel rollout restart daemonset kube-flannel-ds`")])
    if ctx.target and len(ctx.target) > 1 and ctx.target[0].version == 6:
        out.add(Severity.WARNING, "IPv6First", "cluster-cidr",
                f"the cluster-cidr {ctx.target_text} lists IPv6 first: every node's spec.podCIDR (the"
                " primary) is then its IPv6 block.",
                "flannel and many CNI chains expect IPv4 first in a dual-stack cluster (flannel#1629, #1985,"
                " #1688); kube-proxy and Services take the first family as the primary.",
                [Fix("manual", "list IPv4 first in kubeadm networking.podSubnet and kube-controller-manager"
                     " --cluster-cidr for new clusters; existing nodes keep their order until"
                     " re-registered")])
    return out

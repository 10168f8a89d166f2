"""The cluster-cidr: its sources, kube-controller-manager's allocation and flags, and capacity."""

from __future__ import annotations

import math

from webhook.core.cidr import CidrError, IPNetwork, parse_cidr
from webhook.core.cidrset import CidrSet, CidrSetError, MaskTooBigError
from webhook.core.discovery import CidrSource, ControllerManagerFacts, SourceKind
from webhook.core.nodeargs import CONFIG_FILES, distribution_of
from webhook.core.rules.findings import Severity
from webhook.doctor.model import (
    KCM_MANIFEST,
    NO_POD_CIDR_LOG,
    Context,
    Section,
    cidrs_text,
    flannel_networks,
    kcm_flags_fix,
    kube_proxy_fix,
    kubeadm_fix,
)
from webhook.doctor.report import CapacityRow, Fix, SourceRow

__all__ = ["LABELS", "capacity", "cluster", "conflicts", "sources"]

LABELS = {
    SourceKind.FLAG: "--cluster-cidr flag",
    SourceKind.CONTROLLER_MANAGER: "kube-controller-manager --cluster-cidr",
    SourceKind.NODE_ARGS: "k3s/RKE2 server node-args --cluster-cidr",
    SourceKind.KUBEADM: "kubeadm-config networking.podSubnet",
    SourceKind.KUBE_PROXY: "kube-proxy config.conf clusterCIDR",
}


def _status(ctx: Context, s: CidrSource) -> str:
    if s.error:
        return "does not parse"
    if not s.networks:
        return "unset (no value)"
    if s is ctx.res.effective:
        # kube-controller-manager's value, and yet not the one the fixes aim at: the nodes are elsewhere.
        return "effective" if s.networks == ctx.target else "effective, differs"
    return "agrees" if s.networks == ctx.target else "differs"


def sources(ctx: Context) -> list[SourceRow]:
    """One row per place the cluster-cidr is (or could be) written."""
    rows: list[SourceRow] = []
    by_kind = {s.kind for s in ctx.res.sources}
    for kind in SourceKind:
        if kind is SourceKind.FLANNEL:
            continue  # the flannel ConfigMaps have rows of their own, below
        if kind not in by_kind and kind is not SourceKind.NODE_ARGS:  # no row off k3s/RKE2
            status = "not given" if kind is SourceKind.FLAG else "no value"
            rows.append(SourceRow(LABELS[kind], "", "-", status))
        for s in ctx.res.sources:
            if s.kind is kind:
                value = s.describe() if s.networks or s.error else "-"
                rows.append(SourceRow(LABELS[kind], s.origin, value, _status(ctx, s)))
    for cm in ctx.facts.configmaps:
        nets = flannel_networks(cm)
        origin = f"flannel ConfigMap {cm.ref} net-conf.json Network"
        if nets is None:
            status = "refused by flannel"
        elif origin == ctx.origin:
            status = "proposed (no other source)"
        else:
            status = "agrees" if nets == ctx.target else "differs"
        rows.append(SourceRow(f"flannel {cm.ref} Network", origin, cidrs_text(nets) if nets else "-", status))
    return rows


def cluster(ctx: Context) -> Section:
    """The root of most trouble: the cluster-cidr sources and kube-controller-manager's allocation."""
    out = Section()
    res, target = ctx.res, ctx.target
    kcm_flags: dict[str, str] = {}
    kcm_source = next((s for s in res.sources if s.kind is SourceKind.CONTROLLER_MANAGER), None)
    if target is not None and kcm_source is not None:
        if kcm_source.networks != target:
            kcm_flags["cluster-cidr"] = ctx.target_text
        if res.allocate_node_cidrs is not True:
            kcm_flags["allocate-node-cidrs"] = "true"
    kubeadm = next((s for s in res.sources if s.kind is SourceKind.KUBEADM), None)
    kubeadm_wrong = target is not None and kubeadm is not None and kubeadm.networks != target

    if res.effective is None:
        fixes: list[Fix] = []
        if kcm_flags:
            fixes.append(kcm_flags_fix(kcm_flags))
        if kubeadm_wrong:
            fixes.append(kubeadm_fix(ctx.target_text))
        no_alloc = "kube-controller-manager has no --cluster-cidr and does not allocate node CIDRs"
        if not ctx.kcm_found:
            no_alloc = "no kube-controller-manager --cluster-cidr could be read"
        head = "kubeadm init ran without --pod-network-cidr: " if kubeadm is not None else ""
        if target is None:
            out.add(Severity.ERROR, "NoClusterCIDR", "cluster-cidr",
                    f"{head}{no_alloc}, and there is no flannel Network either: nodes get no podCIDR.",
                    "No source holds a pod network (kube-controller-manager, kubeadm-config, kube-proxy,"
                    " flannel ConfigMap), so none can be proposed.",
                    [Fix("manual", "choose the pod network (e.g. 10.244.0.0/16, not overlapping the"
                         " service range or the hosts' networks), then run `flannel-guard doctor"
                         " --cluster-cidr CIDR` for the exact fixes")])
            return out
        out.add(Severity.ERROR, "NoClusterCIDR", "cluster-cidr",
                f"{head}{no_alloc}, so nodes get no podCIDR and flannel fails with '{NO_POD_CIDR_LOG}'.",
                "No cluster-cidr source holds a value (kube-controller-manager --cluster-cidr,"
                " kubeadm-config podSubnet, kube-proxy clusterCIDR); the only pod network in the cluster is"
                f" flannel's Network {ctx.target_text} ({ctx.origin.removeprefix('flannel ConfigMap ')}):"
                " make it the cluster-cidr.",
                fixes)
        return out

    for s in res.sources:
        label = LABELS[s.kind]
        if s.kind is SourceKind.CONTROLLER_MANAGER or (s.networks == target and not s.error):
            continue
        if not s.networks and not s.error:
            if s.kind is SourceKind.KUBEADM:
                out.add(Severity.ERROR, "KubeadmNoPodSubnet", "kubeadm-config",
                        "kubeadm-config has no networking.podSubnet (kubeadm init ran without"
                        f" --pod-network-cidr) but the cluster-cidr is {ctx.target_text}.",
                        f"kubeadm upgrade rewrites {KCM_MANIFEST} from it, without --cluster-cidr and"
                        " --allocate-node-cidrs: new nodes then get no podCIDR.",
                        [kubeadm_fix(ctx.target_text)])
            continue
        why = f"does not parse ({s.error})" if s.error else f"is {s.describe()}"
        fix = (kubeadm_fix(ctx.target_text) if s.kind is SourceKind.KUBEADM
               else kube_proxy_fix(ctx.target_text) if s.kind is SourceKind.KUBE_PROXY
               else _distribution_fix(s, ctx.target_text) if distribution_of(s)
               else Fix("manual", "run doctor without --cluster-cidr, or with the cluster's value"))
        if (server := distribution_of(s)) is not None:
            label = f"{server[0]} server {server[1]} --cluster-cidr"
        out.add(Severity.ERROR, "ClusterCIDRDisagreement", label,
                f"{label} {why} but the cluster-cidr is {ctx.target_text} (from {ctx.origin}).",
                "The settings that must agree (kubeadm podSubnet, kube-controller-manager"
                " --cluster-cidr, flannel Network, node podCIDRs) do not.", [fix])

    if kcm_flags:
        parts = []
        if "cluster-cidr" in kcm_flags:
            have = kcm_source.describe() if kcm_source else "unset"
            parts.append(f"--cluster-cidr is {have}, not {ctx.target_text}")
        alloc_off = "allocate-node-cidrs" in kcm_flags
        if alloc_off:
            parts.append("it runs without --allocate-node-cidrs=true")
        out.add(Severity.ERROR, "NodeCIDRAllocationOff" if alloc_off else "ClusterCIDRDisagreement",
                "kube-controller-manager",
                f"kube-controller-manager: {'; '.join(parts)}" + (": new nodes get no podCIDR." if alloc_off
                                                                  else "."),
                "It hands out every node's podCIDR; flannel then fails with"
                f" '{NO_POD_CIDR_LOG}' (flags lost on upgrade, or kubeadm without podSubnet).",
                [kcm_flags_fix(kcm_flags)])
    elif servers := [d for src in res.sources if (d := distribution_of(src))]:
        distribution, node = servers[0]
        allocates = ("allocates node CIDRs (--allocate-node-cidrs=true, as it starts it)"
                     if res.allocate_node_cidrs else "runs without --allocate-node-cidrs=true:"
                     " nodes get no podCIDR from it")
        out.notes.append(f"kube-controller-manager runs inside {distribution} on its servers (no pod;"
                         f" flags from node {node}'s {distribution}.io/node-args): it {allocates}")
    elif not ctx.kcm_found:
        out.notes.append("kube-controller-manager pod not found (label component=kube-controller-manager in"
                         " kube-system): cannot tell whether it allocates node CIDRs")
    return out


def _distribution_fix(s: CidrSource, target: str) -> Fix:
    """Where a k3s/RKE2 server's cluster-cidr is written: its config.yaml (or its --cluster-cidr flag)."""
    distribution, node = distribution_of(s) or ("k3s", "?")
    path = CONFIG_FILES[distribution]
    return Fix("manual", f"on {distribution} server {node}: cluster-cidr: {target} in {path} (or the"
               f" --cluster-cidr flag), as on the other servers, then restart {distribution}; every server"
               " must give the same value", {"node": node, "file": path, "clusterCIDR": target})


def _flag_conflict(kcm: ControllerManagerFacts, dual: bool) -> str | None:
    """kube-controller-manager's refusal of its mask flags (cmd/kube-controller-manager/app/core.go
    setNodeCIDRMaskSizes), from the flags themselves."""
    both = kcm.node_cidr_mask_size
    if both is None:
        return None
    if dual:
        return (f"kube-controller-manager pod {kcm.pod}: --node-cidr-mask-size is not allowed with a"
                " dual-stack cluster-cidr; kube-controller-manager refuses to start")
    if kcm.node_cidr_mask_size_ipv4 is not None or kcm.node_cidr_mask_size_ipv6 is not None:
        return (f"kube-controller-manager pod {kcm.pod}: --node-cidr-mask-size with"
                " --node-cidr-mask-size-ipv4/-ipv6; kube-controller-manager refuses to start")
    return None


def conflicts(ctx: Context) -> Section:
    """kube-controller-manager flag conflicts and the pod range overlapping the service range."""
    out = Section()
    dual = ctx.target is not None and len(ctx.target) > 1
    for kcm in ctx.facts.controller_managers:
        why = _flag_conflict(kcm, dual)
        if why:
            out.add(Severity.ERROR, "ControllerManagerFlagConflict", "kube-controller-manager", why,
                    fixes=[Fix("manual", f"in {KCM_MANIFEST} keep only --node-cidr-mask-size-ipv4"
                               " / -ipv6 (dual-stack refuses --node-cidr-mask-size)")])
    if not ctx.target:
        return out
    ranges: list[tuple[IPNetwork, str]] = []
    if ctx.res.service is not None:
        ranges += [(svc, ctx.res.service.origin) for svc in ctx.res.service.networks]
    for text in ctx.facts.service_cidrs:  # ServiceCIDR objects (networking.k8s.io/v1, Kubernetes 1.33)
        try:
            ranges.append((parse_cidr(text).network, "ServiceCIDR objects"))
        except CidrError:
            continue
    seen: set[tuple[str, str]] = set()
    for pod_net in ctx.target:
        for svc, origin in ranges:
            key = (str(pod_net), str(svc))
            if key in seen or pod_net.version != svc.version or not pod_net.overlaps(svc):  # type: ignore[arg-type]
                continue
            seen.add(key)
            out.add(Severity.ERROR, "PodServiceOverlap", "cluster-cidr",
                    f"the pod range {pod_net} overlaps the service range {svc} ({origin}).",
                    "Service IPs and pod IPs collide; traffic to either breaks (flannel#660, #1784).",
                    [Fix("manual", "choose a cluster-cidr that does not overlap the service range;"
                         " node podCIDRs cannot be moved in place: nodes must be re-registered")])
    return out


def capacity(ctx: Context) -> tuple[list[CapacityRow], Section]:
    """How many node blocks each family holds against the nodes there are."""
    out = Section()
    rows: list[CapacityRow] = []
    for net in ctx.target or ():
        mask = ctx.view.mask_for(net.version)
        fam_nodes = len(ctx.facts.nodes)
        flag = f"node-cidr-mask-size-ipv{net.version}"
        try:
            cset: CidrSet | None = CidrSet(net, mask)
        except MaskTooBigError as e:
            rows.append(CapacityRow(net, mask, 0, fam_nodes, 0))
            out.add(Severity.ERROR, "NodeMaskTooLong", "kube-controller-manager", f"{e}.",
                    "kube-controller-manager refuses to start (ErrCIDRSetSubNetTooBig).",
                    [kcm_flags_fix({flag: str(net.prefixlen + 16)}, ["node-cidr-mask-size"])])
            continue
        except CidrSetError:
            cset = None
        if cset is not None:
            for nets in ctx.parsed.values():
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
                fixes.append(kcm_flags_fix({flag: str(suggest)}, ["node-cidr-mask-size"]))
            fixes.append(Fix("manual", f"or use a larger cluster-cidr: a /{max(bigger, 0)} or larger has"
                             f" room for {need} node block(s) of /{mask} (kubeadm networking.podSubnet,"
                             " kube-controller-manager --cluster-cidr and flannel Network together)"))
            out.add(Severity.ERROR, "ClusterCIDRTooSmall", "cluster-cidr",
                    f"the cluster-cidr {net} holds {holds} of /{mask} for {fam_nodes} node(s).",
                    "kube-controller-manager then crash-loops or reports CIDRNotAvailable ('no remaining"
                    " CIDRs left to allocate'), and flannel fails with 'open /run/flannel/subnet.env'.",
                    fixes)
        elif cset is not None and cset.full and fam_nodes:
            out.add(Severity.WARNING, "ClusterCIDRFull", "cluster-cidr",
                    f"every node block of /{mask} in {net} is in use: the next node gets no podCIDR.",
                    fixes=[Fix("manual", "use a larger cluster-cidr, or a longer node mask size for new"
                               " clusters")])
    return rows, out

"""Every Node's podCIDRs, judged by the webhook's own rule (:func:`~webhook.core.rules.node.review_node`).

Which nodes keep their podCIDRs and which get a free subnet is decided here, from
the live state: one distinct subnet per node, none that a kept node holds.
"""

from __future__ import annotations

from typing import Any

from webhook.core.cidr import IPNetwork
from webhook.core.cidrset import CidrSetError
from webhook.core.discovery import SourceKind
from webhook.core.dualstack import DualStackAllocator
from webhook.core.nodeindex import NodeCidrIndex
from webhook.core.rules.findings import Finding, Severity
from webhook.core.rules.node import review_node
from webhook.doctor.model import NO_POD_CIDR_LOG, Context, Section, cidrs_text, patch_text
from webhook.doctor.report import Fix, NodeRow

__all__ = ["kcm_fix_proposed", "nodes"]

_NODE_PROBLEMS = {
    "OutsideClusterCIDR": "outside", "WrongSize": "wrong-size", "InvalidPodCIDR": "invalid",
    "FamilyNotInCluster": "wrong-family", "TooManyPodCIDRs": "too-many", "DuplicateFamily": "too-many",
    "PodCIDRMismatch": "podCIDR≠podCIDRs[0]",
}
_SHOWN_NAMES = 5


def kcm_fix_proposed(ctx: Context) -> bool:
    """True when the cidr section proposes kube-controller-manager flags that make it allocate."""
    kcm = next((s for s in ctx.res.sources if s.kind is SourceKind.CONTROLLER_MANAGER), None)
    return (ctx.target is not None and kcm is not None
            and (kcm.networks != ctx.target or ctx.res.allocate_node_cidrs is not True))


def _problems(ctx: Context, name: str, pod_cidrs: tuple[str, ...]) -> tuple[list[str], list[Finding]]:
    if not pod_cidrs:
        return ["missing"], []
    if not ctx.target:
        return [], []
    obj = {"metadata": {"name": name}, "spec": {"podCIDR": pod_cidrs[0], "podCIDRs": list(pod_cidrs)}}
    found = review_node("CREATE", obj, None, ctx.view)
    nets = ctx.parsed.get(name, ())
    probs: list[str] = []
    for f in found:
        if f.code == "OverlapsNode":
            probs += [f"overlaps {other}" for n in nets
                      for other, _ in ctx.index.overlapping(n, exclude=name, limit=5)]
        elif f.code == "MissingFamily":
            have = {n.version for n in nets}
            probs += [f"missing-ipv{t.version}" for t in ctx.target if t.version not in have]
        else:
            probs.append(_NODE_PROBLEMS.get(f.code, f.code))
    return list(dict.fromkeys(probs)), found


class _Planner:
    """Free subnets for the nodes that need one, computed once from the nodes that keep theirs."""

    def __init__(self, ctx: Context, kept: NodeCidrIndex, recreate: list[str]) -> None:
        self.allocator: DualStackAllocator | None = None
        if not ctx.target:
            return
        try:
            self.allocator = DualStackAllocator(ctx.target, mask_v4=ctx.view.mask_v4,
                                                mask_v6=ctx.view.mask_v6)
        except (CidrSetError, ValueError):
            return
        self.allocator.seed(kept)
        # Nodes to re-register keep their subnet until then: avoid the ones of the node size.
        for name in recreate:
            self.allocator.occupy(n for n in ctx.parsed.get(name, ())
                                  if n.prefixlen == ctx.view.mask_for(n.version))

    def free(self) -> tuple[IPNetwork, ...] | None:
        if self.allocator is None:
            return None
        try:
            return self.allocator.allocate()
        except CidrSetError:
            return None


def _recreate_fix(name: str, planner: _Planner) -> Fix:
    free = planner.free()
    text = (f"a podCIDR cannot change once set: `kubectl drain {name} --ignore-daemonsets"
            f" --delete-emptydir-data && kubectl delete node {name}`, restart the kubelet on {name}"
            " so that it registers again")
    params: dict[str, Any] = {"node": name}
    if free is not None:
        ptext, patch = patch_text(name, free)
        text += f", then (unless kube-controller-manager allocates) `{ptext}`"
        params["podCIDRs"] = [str(n) for n in free]
        params["patch"] = patch
    return Fix("recreate-node", text, params)


def _missing(ctx: Context, out: Section, names: list[str], planner: _Planner) -> None:
    """One finding for every node without a podCIDR: they share one cause."""
    if not names:
        return
    shown = ", ".join(names[:_SHOWN_NAMES]) + (f" and {len(names) - _SHOWN_NAMES} more"
                                               if len(names) > _SHOWN_NAMES else "")
    if len(names) == 1:
        summary = f"node {names[0]} has no podCIDR: flannel on it fails with '{NO_POD_CIDR_LOG}'."
        subject = f"node {names[0]}"
    else:
        summary = (f"{len(names)} nodes have no podCIDR ({shown}): flannel on them fails with"
                   f" '{NO_POD_CIDR_LOG}'.")
        subject = "nodes"
    alternative = kcm_fix_proposed(ctx)
    fixes: list[Fix] = []
    for name in names:
        free = planner.free()
        if free is None:
            why = ("the cluster-cidr is unknown" if not ctx.target
                   else f"no free /{ctx.view.mask_v4} is left in {ctx.target_text}")
            out.add(Severity.ERROR, "NodeWithoutPodCIDR", subject, summary,
                    f"No subnet can be proposed: {why}.",
                    [Fix("manual", "fix the cluster-cidr first (see above), then run doctor again")],
                    subjects=[f"node {n}" for n in names])
            return
        text, patch = patch_text(name, free)
        fixes.append(Fix("patch-node", text, {"node": name, "patch": patch},
                         alternative_to="set-controller-manager-flags" if alternative else ""))
    detail = "Free subnets, computed from the live state (unique, inside the cluster-cidr)."
    if alternative:
        detail += (" Once kube-controller-manager runs with the flags above it allocates these nodes"
                   " itself: the patches are the alternative to waiting for it, not extra steps.")
    elif ctx.res.allocate_node_cidrs is True:
        detail += " kube-controller-manager allocates: if it does not, look at its log."
    else:
        detail += " Once kube-controller-manager allocates, it does this for new nodes."
    if ctx.res.effective is None:
        cause = "NoClusterCIDR"
    elif ctx.res.allocate_node_cidrs is not True:
        cause = "NodeCIDRAllocationOff"
    else:
        cause = "ClusterCIDRDisagreement" if alternative else ""
    out.add(Severity.ERROR, "NodeWithoutPodCIDR", subject, summary, detail, fixes,
            subjects=[f"node {n}" for n in names], caused_by=cause)


def nodes(ctx: Context) -> tuple[list[NodeRow], Section]:
    out = Section()
    if not ctx.facts.nodes_readable:
        out.add(Severity.WARNING, "NodesUnreadable", "nodes",
                "the Nodes could not be listed: their podCIDRs were not checked.",
                fixes=[Fix("manual", "run doctor with credentials that may list nodes"
                           " (kubectl auth can-i list nodes)")])
    ordered = sorted(ctx.facts.nodes, key=lambda n: n.name)
    problems: dict[str, list[str]] = {}
    rule_findings: dict[str, list[Finding]] = {}
    for n in ordered:
        problems[n.name], rule_findings[n.name] = _problems(ctx, n.name, n.pod_cidrs)

    # Which nodes keep their podCIDRs: in name order, those without a problem of their own
    # that overlap no node kept before them. The others are re-registered with a free subnet.
    kept = NodeCidrIndex()
    recreate: list[str] = []
    for name in sorted(problems):
        probs = [p for p in problems[name] if not p.startswith("overlaps")]
        nets = ctx.parsed.get(name, ())
        if "missing" in probs:
            continue
        errors = [p for p in probs if not p.startswith("missing-")]
        if errors or any(kept.overlapping(n, limit=1) for n in nets):
            recreate.append(name)
        else:
            kept.set(name, nets)
    planner = _Planner(ctx, kept, recreate)

    _missing(ctx, out, [name for name in sorted(problems) if problems[name] == ["missing"]], planner)
    for name in sorted(problems):
        probs = problems[name]
        if name in recreate:
            _recreate(ctx, out, name, rule_findings.get(name, []), planner, kept)
        elif any(p.startswith("missing-") for p in probs) and probs != ["missing"]:
            fam = "IPv6" if "missing-ipv6" in probs else "IPv4"
            out.add(Severity.WARNING, "MissingFamily", f"node {name}",
                    f"node {name} has no {fam} podCIDR but the cluster-cidr {ctx.target_text} is dual-stack.",
                    f"Its pods get no {fam} connectivity; a podCIDR can only be set once.",
                    [_recreate_fix(name, planner)])
    return [NodeRow(n.name, n.pod_cidrs, tuple(problems[n.name])) for n in ordered], out


def _recreate(ctx: Context, out: Section, name: str, found: list[Finding], planner: _Planner,
              kept: NodeCidrIndex) -> None:
    errs = [f for f in found if f.severity is Severity.ERROR]
    own = [f for f in errs if f.code != "OverlapsNode"]
    if own:
        summary = " ".join(f.summary for f in own[:3])
    else:
        nets = ctx.parsed.get(name, ())
        hits = [h for n in nets for h in kept.overlapping(n, limit=1)]
        other = hits[0] if hits else ("another node", nets[0] if nets else "?")
        summary = (f"node {name}: podCIDR {cidrs_text(nets)} overlaps node {other[0]}'s {other[1]},"
                   " which keeps it.")
    detail = " ".join(dict.fromkeys(f.detail for f in errs if f.detail))
    out.add(Severity.ERROR, "BadNodePodCIDR", f"node {name}", summary, detail, [_recreate_fix(name, planner)])

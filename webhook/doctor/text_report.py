"""The report as an operator reads it: status first, one table per section, then findings and fixes."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from webhook.core.rules.findings import Severity
from webhook.doctor.report import Report

__all__ = ["render_text"]


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


def _cidrs_text(cidrs: Sequence[str]) -> str:
    return ",".join(cidrs) if cidrs else "-"


def _yes(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "NO"


def render_text(r: Report) -> str:
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
                          _yes(c.matches)] for c in r.configmaps])
    else:
        lines.append("  none found")
    if r.guard is not None:
        g = r.guard
        lines += ["", "FLANNEL-GUARD"]
        lines += _table(["NAMESPACE", "VALIDATING", "MUTATING", "READY ENDPOINTS", "CERT NOT AFTER",
                         "CABUNDLE VERIFIES", "ALLOCATOR"],
                        [[g.namespace, _yes(g.validating), _yes(g.mutating), str(g.ready_endpoints),
                          g.cert_not_after or "-", _yes(g.cert_verified), g.allocator]])
        if g.protections:
            lines += ["", "PROTECTIONS (what holds while flannel-guard is down)"]
            lines += _table(["KIND", "NAME", "STATE", "WHAT IT DOES"],
                            [[p.kind, p.name, p.state, p.detail] for p in g.protections])
    lines += ["", f"NODES ({len(r.nodes)})"]
    lines += _table(["NODE", "PODCIDRS", "STATUS"],
                    [[n.name, _cidrs_text(n.pod_cidrs), ", ".join(n.problems) or "ok"] for n in r.nodes])
    lines += ["", f"FLANNEL PODS NOT READY ({len(r.pods_not_ready)} of {r.pods_seen})"]
    if r.pods_not_ready:
        lines += _table(["POD", "NODE", "STATE", "LAST LOG LINE"],
                        [[p.ref, p.node or "-", p.state or "-", p.last_log_line or "-"]
                         for p in r.pods_not_ready])
    lines += ["", f"FINDINGS ({len(r.findings)})" if r.findings else "FINDINGS: none"]
    numbers = {}
    for i, f in enumerate(r.findings, 1):
        numbers.setdefault(f.code, i)
        tag = "  [root cause]" if f.root_cause else ""
        if f.caused_by and f.caused_by in numbers:
            tag += f"  [follows from {numbers[f.caused_by]}]"
        lines.append(f"  {i}. {f.severity.value.upper():7} {f.code}  {f.subject}{tag}")
        lines += textwrap.wrap(f.summary, 106, initial_indent="       ", subsequent_indent="       ")
        if f.detail:
            lines += textwrap.wrap(f.detail, 106, initial_indent="       ", subsequent_indent="       ")
        for fix in f.fixes:
            first, *rest = fix.text.split("\n")
            label = "or: " if fix.alternative_to else "fix:"
            lines.append(f"       {label} {first}")
            lines += [f"            {line}" for line in rest]
    if r.notes:
        lines += ["", "NOTES"] + [f"  - {n}" for n in r.notes]
    return "\n".join(lines)

"""flannel-guard's podCIDR claims as the API holds them: Leases that are not claims, claims for
Nodes that do not exist, and the cap on claims waiting for their Node (issue 28).

The same pure decisions the server makes (:mod:`webhook.core.claimpolicy`), over the Leases
``gather`` read: a Lease labelled as a claim is believed only when it is named after its
CIDR, of the node mask, inside the cluster-cidr and not dated ahead; a believed claim whose
holder is no Node, or a Node holding another podCIDR, is pending; past the cap
(``min(64, a quarter of the pool)``) new Nodes get their podCIDR from the assigning loop
instead of at registration. Either points at a caller forging reviews (no ``--client-ca``)
or at something writing Leases in flannel-guard's namespace.
"""

from __future__ import annotations

from datetime import UTC, datetime

from webhook.control.settings import CLAIM_CLOCK_SKEW, PENDING_CLAIMS_MAX, PENDING_CLAIMS_SHARE
from webhook.core.cidr import CidrError, parse_cidr
from webhook.core.claimpolicy import ClaimPolicy, distrust, pending, pending_cap
from webhook.core.constants import NAMESPACE
from webhook.core.rules.findings import Severity
from webhook.doctor.facts import ClaimFacts
from webhook.doctor.model import Context, Section
from webhook.doctor.report import Fix

__all__ = ["STALE_PENDING_SECONDS", "claims"]

#: A real join holds a pending claim for the webhook's timeout at most (5 s; 30 s is the API
#: server's bound): one older than this is no join in progress.
STALE_PENDING_SECONDS = 30.0
_NAMED = 5
_CLIENT_CA = Fix("manual", "let only kube-apiserver call flannel-guard: serve --client-ca"
                 " (manifests/components/client-ca; Helm --set clientCA.enabled=true; README"
                 " 'Letting in only the API server'). flannel-guard releases these claims by their age.")


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_NAMED])
    return shown + (f" and {len(items) - _NAMED} more" if len(items) > _NAMED else "")


def claims(ctx: Context, now: datetime | None = None) -> tuple[tuple[tuple[str, str], ...], Section]:
    """The findings, and the claims believed as ``(holder, CIDR)`` (what the address space draws)."""
    out = Section()
    facts = ctx.facts
    if not facts.claims:
        return facts.reservations, out
    at = (now or datetime.now(UTC)).timestamp()
    policy = ClaimPolicy(ctx.target, ctx.res.mask_v4, ctx.res.mask_v6, pending_max=PENDING_CLAIMS_MAX,
                         pending_share=PENDING_CLAIMS_SHARE, skew=CLAIM_CLOCK_SKEW)
    namespace = facts.guard.namespace if facts.guard is not None else NAMESPACE
    believed: list[ClaimFacts] = []
    untrusted: list[tuple[ClaimFacts, str]] = []
    for c in facts.claims:
        try:
            cidr = parse_cidr(c.cidr).network
        except CidrError:
            untrusted.append((c, "its flannel-guard.io/cidr annotation is not a CIDR"))
            continue
        reason = distrust(cidr, c.lease, (c.acquired, c.renewed), policy, at)
        if reason is None:
            believed.append(c)
        else:
            untrusted.append((c, ClaimPolicy.explain(reason)))
    if untrusted:
        names = [c.lease for c, _ in untrusted]
        why = "; ".join(f"{c.lease} ({c.cidr}, held by {c.holder[:60] or '?'}): {reason}"
                        for c, reason in untrusted[:_NAMED])
        out.add(Severity.WARNING, "GuardClaimUntrusted", "flannel-guard",
                f"{len(untrusted)} Lease(s) in {namespace} labelled as podCIDR claims are not claims:"
                f" {why}.",
                "flannel-guard ignores them (they hold no CIDR); flannel-guard never writes such a Lease:"
                " something else can write Leases in its namespace.",
                [Fix("manual", f"kubectl -n {namespace} delete lease {' '.join(names[:20])}"),
                 Fix("manual", f"allow Lease writes in {namespace} to flannel-guard's ServiceAccount only:"
                     " the ValidatingAdmissionPolicy of manifests/components/admission-policy")],
                subjects=names[:20])
    index = ctx.index
    waiting = []
    for c in believed:
        cidr = parse_cidr(c.cidr).network
        if pending(cidr, c.holder, index.cidrs_of):
            waiting.append(c)
    stale = [c for c in waiting if at - (c.acquired or c.renewed) >= STALE_PENDING_SECONDS]
    if stale:
        held = [f"{c.cidr} for {c.holder[:60]}" + (" (a Node with another podCIDR)"
                                                    if c.holder in ctx.nodes_by_name else "")
                for c in stale]
        out.add(Severity.WARNING, "GuardClaimsForUnseenNodes", "flannel-guard",
                f"{len(stale)} podCIDR claim(s) older than {int(STALE_PENDING_SECONDS)} s are for Nodes that"
                f" do not exist or hold another podCIDR: {_names(held)}.",
                "A joining Node is stored within seconds of its claim; these are forged Node reviews sent"
                " to flannel-guard's port (no --client-ca), or Nodes refused later in the admission chain.",
                [_CLIENT_CA], subjects=[c.holder[:253] for c in stale[:20]])
    for version in sorted({parse_cidr(c.cidr).network.version for c in waiting}):
        count = sum(1 for c in waiting if parse_cidr(c.cidr).network.version == version)
        cap = pending_cap(policy, version)
        if count < cap:
            continue
        out.add(Severity.WARNING, "GuardPendingCapReached", "flannel-guard",
                f"{count} IPv{version} podCIDR claim(s) wait for their Node: the cap of {cap} (the smaller"
                f" of {PENDING_CLAIMS_MAX} and {int(PENDING_CLAIMS_SHARE * 100)}% of the pool) is reached.",
                "New Nodes register without a podCIDR and get one from the assigning loop once stored;"
                " /validate judges podCIDR writes of Nodes not stored yet without claiming them.",
                [_CLIENT_CA])
    return tuple((c.holder, c.cidr) for c in believed), out

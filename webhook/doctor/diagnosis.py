"""``diagnose``: :class:`~webhook.doctor.facts.ClusterFacts` in, a :class:`~webhook.doctor.report.Report` out.

Each section returns its findings; :func:`webhook.doctor.rank.rank_findings` orders
them and names the root cause. The rules are the webhook's own
(:func:`~webhook.core.rules.configmap.review_configmap`, :func:`~webhook.core.rules.node.review_node`),
so the doctor and the webhook never judge differently.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from webhook.core.discovery import SourceKind
from webhook.core.rules.findings import RuleSettings
from webhook.doctor.addrspace import address_space
from webhook.doctor.facts import ClusterFacts
from webhook.doctor.model import Context, Section
from webhook.doctor.rank import rank_findings
from webhook.doctor.report import Report
from webhook.doctor.sections import (
    annotations,
    cidr,
    claims,
    flannel_config,
    guard,
    kubelet,
    nodes,
    pods,
    protections,
)

__all__ = ["diagnose"]


def diagnose(facts: ClusterFacts, settings: RuleSettings | None = None, *,
             now: datetime | None = None) -> Report:
    """The whole diagnosis of ``facts``: tables, findings (root cause first) and fixes."""
    settings = settings or RuleSettings()
    # The ConfigMaps doctor read are the guarded ones (--flannel-configmap).
    settings = dataclasses.replace(settings, flannel_configmaps=frozenset(facts.flannel_configmaps))
    ctx = Context(facts, settings)
    sections: list[Section] = [cidr.cluster(ctx), cidr.conflicts(ctx)]
    capacity, s = cidr.capacity(ctx)
    sections.append(s)
    if now is None and facts.gathered_at is not None:
        now = datetime.fromtimestamp(facts.gathered_at, UTC)
    guard_row, s = guard.guard(ctx, now)
    sections.append(s)
    rows, s = protections.protections(ctx)
    sections.append(s)
    if guard_row is not None:
        guard_row = dataclasses.replace(guard_row, protections=rows)
    believed, s = claims.claims(ctx, now)  # only believed claims are drawn as reserved
    sections.append(s)
    cm_rows, s = flannel_config.configmaps(ctx)
    sections += [s, annotations.flannel_settings(ctx)]
    node_rows, s = nodes.nodes(ctx)
    sections += [s, annotations.flannel_annotations(ctx)]
    bad_pods, s = pods.pods(ctx)
    sections += [s, kubelet.conditions(ctx), kubelet.events(ctx), kubelet.pod_ips(ctx)]
    findings = rank_findings([f for s in sections for f in s.findings])
    notes = [*ctx.res.absent, *facts.notes, *(n for s in sections for n in s.notes)]
    masks = {4: ctx.view.mask_v4, 6: ctx.view.mask_v6}
    return Report(
        cluster_cidr=ctx.target,
        cluster_cidr_origin=ctx.origin,
        agree=facts.resolution.agree,
        sources=tuple(cidr.sources(ctx)),
        # k3s/RKE2 run kube-controller-manager inside the server: its node-args are its flags.
        controller_manager_found=ctx.kcm_found or any(s.kind is SourceKind.NODE_ARGS
                                                      for s in facts.resolution.sources),
        allocate_node_cidrs=facts.resolution.allocate_node_cidrs,
        mask_v4=facts.resolution.mask_v4,
        mask_v6=facts.resolution.mask_v6,
        capacity=tuple(capacity),
        configmaps=tuple(cm_rows),
        nodes=tuple(node_rows),
        pods_not_ready=tuple(bad_pods),
        pods_seen=len(facts.pods),
        findings=findings,
        notes=tuple(dict.fromkeys(notes)),
        address_space=address_space(ctx.target, masks, ctx.parsed, believed),
        guard=guard_row,
    )

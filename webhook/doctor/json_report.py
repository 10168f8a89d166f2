"""The report as JSON (``doctor -o json``); ``doctor --html`` embeds exactly this document."""

from __future__ import annotations

import json
from typing import Any

from webhook.doctor.report import Report

__all__ = ["render_json", "report_document"]


def report_document(r: Report) -> dict[str, Any]:
    """The report as plain data; ``fixes`` lists every machine-readable fix, in the order to apply them."""
    g = r.guard
    return {
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
        "addressSpace": [m.to_json() for m in r.address_space],
        "flannelConfigMaps": [{"configMap": c.ref, "network": c.network, "ipv6Network": c.ipv6_network,
                               "backend": c.backend, "accepted": c.accepted, "matches": c.matches}
                              for c in r.configmaps],
        "flannelGuard": None if g is None else {
            "namespace": g.namespace, "validatingWebhook": g.validating, "mutatingWebhook": g.mutating,
            "readyEndpoints": g.ready_endpoints, "certNotAfter": g.cert_not_after,
            "caBundleVerifies": g.cert_verified, "allocator": g.allocator,
            "protections": [{"kind": p.kind, "name": p.name, "state": p.state, "detail": p.detail}
                            for p in g.protections]},
        "nodes": [{"name": n.name, "podCIDRs": list(n.pod_cidrs), "ok": not n.problems,
                   "problems": list(n.problems)} for n in r.nodes],
        "flannelPodsNotReady": [{"namespace": p.namespace, "name": p.name, "node": p.node, "state": p.state,
                                 "restarts": p.restarts, "lastLogLine": p.last_log_line}
                                for p in r.pods_not_ready],
        "findings": [f.to_json() for f in r.findings],
        "fixes": [fix.to_json() for fix in r.fixes],
        "notes": list(r.notes),
    }


def render_json(r: Report) -> str:
    return json.dumps(report_document(r), indent=2)

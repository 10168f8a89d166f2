"""Which finding is the root cause: two rules, never the order the sections ran in.

1. What the crash-looping flannel's own error names comes first. flannel's log line is the
   one piece of evidence that says which setting it trips on (``subnet "10.244.0.0/16"
   specified in the flannel net config doesn't contain "172.18.1.0/24"`` names flannel's
   Network, not kube-proxy's clusterCIDR, though both say 10.244.0.0/16): the finding that
   :data:`CRASH_CODES` follow from, and what that one follows from in turn (``caused_by``),
   come before every finding the error does not name.
2. Otherwise an explicit rank per code: lower = further upstream.

A cluster-wide setting (the cluster-cidr, the controller manager's allocation) comes
before the flannel ConfigMap, which comes before the nodes, which come before the pods
and the host symptoms that follow from them. The root cause is the first error in that
order; warnings are root causes only when there is no error. Findings are listed in rank order (within a rank,
errors before warnings, then the sections' order), so the fixes come out in the
order to apply them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from webhook.core.rules.findings import Severity
from webhook.doctor.report import DoctorFinding

__all__ = ["CRASH_CODES", "RANK", "named_by_flannel", "rank", "rank_findings"]

RANK: dict[str, int] = {
    # The cluster-cidr and its allocation: everything else follows from them.
    "NoClusterCIDR": 10,
    "ControllerManagerFlagConflict": 12,
    "NodeMaskTooLong": 12,
    "ClusterCIDRTooSmall": 14,
    "NodeCIDRAllocationOff": 16,
    "ClusterCIDRDisagreement": 16,
    "KubeadmNoPodSubnet": 18,
    "PodServiceOverlap": 20,
    "IPv6First": 22,
    "ClusterCIDRFull": 24,
    # flannel-guard itself: a webhook without endpoints blocks the writes that would fix the rest.
    "GuardNoEndpoints": 26,
    "GuardCertExpired": 26,
    "GuardCABundleMismatch": 26,
    "GuardCertWrongName": 26,
    "GuardCertUnreadable": 26,
    # flannel's configuration.
    "NoFlannelConfigMap": 30,
    "NetConfNotJSON": 30,
    "BackendMismatch": 34,
    "VNIMismatch": 34,
    "WindowsVNITooLow": 34,
    "NFTablesMismatch": 36,
    # The nodes.
    "NodesUnreadable": 40,
    "NodeWithoutPodCIDR": 42,
    "BadNodePodCIDR": 44,
    "MissingFamily": 46,
    "PublicIPShared": 48,
    "PublicIPNotNodeAddress": 49,
    # Host prerequisites that only the node can mend.
    "BrNetfilterMissing": 50,
    "CNIPluginMissing": 52,
    "ApiServiceUnreachable": 54,
    # Symptoms: flannel's pods, then what the kubelet reports.
    "FlannelPodNotReady": 60,
    "FlannelNotUp": 62,
    "CNINotReady": 64,
    "SubnetEnvMissing": 66,
    "StaleCNIBridge": 68,
    "PodIPOutsideNodeCIDR": 70,
    "IPAMExhausted": 72,
    "GuardWebhookMissing": 80,
    "GuardCertExpiring": 82,
    # Claims (issue 28): what forged reviews or foreign Lease writes leave behind.
    "GuardClaimUntrusted": 84,
    "GuardPendingCapReached": 85,
    "GuardClaimsForUnseenNodes": 86,
}
#: A flannel ConfigMap rule code not listed above ranks with the ConfigMap.
_DEFAULT = 32


#: Findings that stand for flannel pods failing, attributed (``caused_by``) from their own log lines.
CRASH_CODES = frozenset({"FlannelPodNotReady"})


def rank(f: DoctorFinding) -> int:
    return RANK.get(f.code, _DEFAULT)


def named_by_flannel(findings: Sequence[DoctorFinding]) -> frozenset[str]:
    """The codes the failing flannel pods' errors point at, and the causes of those, transitively."""
    causes = {f.code: f.caused_by for f in findings if f.caused_by}
    present = {f.code for f in findings}
    named: set[str] = set()
    for f in findings:
        code = f.caused_by if f.code in CRASH_CODES else ""
        while code and code in present and code not in named:
            named.add(code)
            code = causes.get(code, "")
    return frozenset(named)


def rank_findings(findings: Sequence[DoctorFinding]) -> tuple[DoctorFinding, ...]:
    """``findings`` in rank order, the root cause marked; symptoms of a present cause keep ``caused_by``."""
    named = named_by_flannel(findings)
    ordered = sorted(enumerate(findings),
                     key=lambda p: (p[1].code not in named, rank(p[1]),
                                    p[1].severity is not Severity.ERROR, p[0]))
    out = [f for _, f in ordered]
    present = {f.code for f in out}
    out = [f if not f.caused_by or f.caused_by in present else dataclasses.replace(f, caused_by="")
           for f in out]
    if not out:
        return ()
    errors = [i for i, f in enumerate(out) if f.severity is Severity.ERROR]
    root = errors[0] if errors else 0
    out[root] = dataclasses.replace(out[root], root_cause=True)
    return tuple(out)

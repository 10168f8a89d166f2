"""doctor's ranking as a rule, over the field reports' shapes (../shared/field-reports.md).

The rule (webhook/doctor/rank.py): what the crash-looping flannel's own error names comes
first (the finding its pods follow from, and that one's causes); otherwise the rank per code.
And no fix deletes or re-registers a node that a changed setting makes valid again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from doctor_cluster import SEED_MESSAGE
from test_doctor import V4, facts, net_conf, resolution

from webhook.core.rules.findings import Severity
from webhook.doctor import ClusterFacts, PodFacts, diagnose

#: flannel's error when its Network does not contain the node's podCIDR (pkg/subnet/kube/kube.go).
NOT_CONTAINED = ('Error registering network: failed to acquire lease: subnet "{net}" specified in the'
                 ' flannel net config doesn\'t contain "{cidr}" PodCIDR of the "{node}" node')
#: Words of a fix that moves a node: only right when no setting makes the node valid.
MOVES_A_NODE = ("kubectl delete node", "re-register", "register again")


def crashing(nodes: dict[str, list[str]], net: str) -> list[PodFacts]:
    return [PodFacts("kube-flannel", f"kube-flannel-ds-{n}", n, False, "CrashLoopBackOff", 4,
                     NOT_CONTAINED.format(net=net, cidr=c[0], node=n)) for n, c in nodes.items() if c]


@dataclass
class Case:
    given: ClusterFacts
    root: str                       # the root cause's code
    first_fix: str = ""             # the root cause's fix action
    ahead_of: tuple[str, ...] = ()  # codes that must come after the root cause
    absent: tuple[str, ...] = ()    # codes that must not be reported
    moves_nodes: bool = False       # whether some fix may re-register a node
    fix_says: list[str] = field(default_factory=list)


NODES_172 = {"cp1": ["172.18.0.0/24"], "worker-1": ["172.18.1.0/24"]}
NODES_224 = {"cp1": ["10.224.0.0/24"], "worker-1": ["10.224.1.0/24"]}

CASES = {
    # The case: kube-controller-manager and kubeadm say 172.18, flannel and kube-proxy still
    # 10.244, flannel crash-loops naming its net config. kube-proxy's value is not what it trips on.
    "flannel-and-kube-proxy-left-behind": Case(
        facts(resolution("172.18.0.0/16", pod_subnet="172.18.0.0/16", proxy=V4), flannel=net_conf(V4),
              nodes=NODES_172, pods=crashing(NODES_172, V4)),
        root="NetworkMismatch", first_fix="set-flannel-network",
        ahead_of=("ClusterCIDRDisagreement", "FlannelPodNotReady"), absent=("StrandsNodes",),
        fix_says=['"Network": "172.18.0.0/16"']),
    # Field report 1: kubeadm --pod-network-cidr with a typo (10.224), the stock 10.244 in flannel.
    "pod-network-cidr-typo": Case(
        facts(resolution("10.224.0.0/16", pod_subnet="10.224.0.0/16"), flannel=net_conf(V4),
              nodes=NODES_224, pods=crashing(NODES_224, V4)),
        root="NetworkMismatch", first_fix="set-flannel-network", absent=("StrandsNodes",),
        fix_says=['"Network": "10.224.0.0/16"']),
    # Field report 2: the same mismatch, accepted silently by an older flannel: no pod crashes.
    "mismatch-without-a-crash": Case(
        facts(resolution("10.224.0.0/16", pod_subnet="10.224.0.0/16"), flannel=net_conf(V4),
              nodes=NODES_224),
        root="NetworkMismatch", first_fix="set-flannel-network", absent=("StrandsNodes",)),
    # kube-controller-manager's flag changed after the nodes were allocated (or typed wrong): kubeadm,
    # kube-proxy, flannel and every node agree on 10.244. The flag moves back; no node moves.
    "controller-manager-flag-changed-under-the-nodes": Case(
        facts(resolution("10.245.0.0/16", pod_subnet=V4, proxy=V4), flannel=net_conf(V4)),
        root="ClusterCIDRDisagreement", first_fix="set-controller-manager-flags",
        absent=("BadNodePodCIDR", "NetworkMismatch"), fix_says=[f"--cluster-cidr={V4}"]),
    # Field report 4, the seed: no cluster-cidr anywhere but flannel's, a node without a podCIDR.
    "seed-no-pod-cidr": Case(
        facts(resolution(None, allocate=False, pod_subnet=None), flannel=net_conf("172.18.0.0/16"),
              nodes={"cp1": ["172.18.0.0/24"], "worker-0001": []},
              pods=[PodFacts("kube-flannel", "kube-flannel-ds-w", "worker-0001", False, "CrashLoopBackOff",
                             3, SEED_MESSAGE)]),
        root="NoClusterCIDR", ahead_of=("NodeWithoutPodCIDR", "FlannelPodNotReady")),
    # Field report 5: the whole range patched on three nodes: the nodes are wrong whatever the settings.
    "whole-range-on-every-node": Case(
        facts(nodes={"a": [V4], "b": [V4], "c": [V4]}),
        root="BadNodePodCIDR", moves_nodes=True),
    # Field report 7: a /25 cluster-cidr with the /24 node mask.
    "cluster-cidr-smaller-than-the-node-mask": Case(
        facts(resolution("10.244.0.0/25", pod_subnet="10.244.0.0/25"), flannel=net_conf("10.244.0.0/25"),
              nodes={"cp1": []}),
        root="ClusterCIDRTooSmall"),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_the_root_cause_and_the_fixes_follow_the_rule(case: Case) -> None:
    report = diagnose(case.given)
    codes = [f.code for f in report.findings]
    [root] = [f for f in report.findings if f.root_cause]
    assert root.code == case.root, codes
    assert next(f for f in report.findings if f.severity is Severity.ERROR) is root
    if case.first_fix:
        assert root.fixes and root.fixes[0].action == case.first_fix
    for later in case.ahead_of:
        assert later in codes and codes.index(later) > codes.index(root.code)
    for code in case.absent:
        assert code not in codes
    fixes = " ".join(fix.text for f in report.findings for fix in f.fixes)
    assert any(w in fixes for w in MOVES_A_NODE) is case.moves_nodes, fixes
    for words in case.fix_says:
        assert words in " ".join(fix.text for fix in root.fixes)


def _stranding_fix(cluster: str, nodes: dict[str, str]) -> str:
    from ipaddress import ip_network

    from webhook.core.nodeindex import NodeCidrIndex
    from webhook.core.rules import ClusterView, ReviewInput, RuleSettings, review

    index = NodeCidrIndex()
    for name, cidr in nodes.items():
        index.set(name, [ip_network(cidr)])
    view = ClusterView(cluster_cidr=(ip_network(cluster),), cidr_source="test", nodes=index)
    obj = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"namespace": "kube-flannel", "name": "kube-flannel-cfg"},
           "data": {"net-conf.json": net_conf(V4)}}
    found = review(ReviewInput(kind="ConfigMap", operation="CREATE", namespace="kube-flannel",
                               name="kube-flannel-cfg", object=obj, old_object=None), view, RuleSettings())
    [strands] = [f for f in found if f.code == "StrandsNodes"]
    return strands.fix


def test_the_webhooks_denial_moves_no_node_that_the_cluster_cidr_holds() -> None:
    # The case at admission: Network 10.244 while the nodes sit in the 172.18 cluster-cidr.
    fix = _stranding_fix("172.18.0.0/16", {"cp1": "172.18.0.0/24", "worker-1": "172.18.1.0/24"})
    assert "172.18.0.0/16" in fix and not any(w in fix for w in MOVES_A_NODE)
    # A node outside the cluster-cidr too: only re-registering moves it.
    fix = _stranding_fix("172.18.0.0/16", {"cp1": "172.18.0.0/24", "old": "192.168.7.0/24"})
    assert "re-register" in fix

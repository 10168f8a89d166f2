"""One node model, one verdict: the webhook, ``check`` and ``doctor`` judge the same Nodes alike.

Hypothesis draws sets of stored Nodes (podCIDRs valid, with host bits, of the wrong size,
outside the range, shared, missing) in a 10.244.0.0/16 cluster with /24 node blocks. For each
set, three readers name the Nodes with a podCIDR problem:

* the webhook: the Node rule on an UPDATE that sets the podCIDRs, against an index of all the
  others (what /validate would refuse when that Node's podCIDR is written);
* ``flannel-guard check`` on the same Nodes as ``kubectl get nodes -o json`` prints them;
* ``doctor`` on the same Nodes as it gathers them from the API.

Nodes without a podCIDR are a finding of check and doctor (flannel fails on them), and a
write the webhook admits (there is nothing to judge): they are compared apart.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.check import check_documents
from webhook.core.discovery import CidrSource, SourceKind
from webhook.core.nodeindex import NodeCidrIndex
from webhook.core.nodemodel import node_model
from webhook.core.resolve import resolve
from webhook.core.rules import ClusterView, RuleSettings, Severity
from webhook.core.rules.node import review_node
from webhook.doctor import diagnose
from webhook.doctor.facts import ClusterFacts, ConfigMapFacts, NodeFacts

CLUSTER = (ipaddress.ip_network("10.244.0.0/16"),)
NET_CONF = '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}'

cidr_texts = st.one_of(
    st.integers(0, 5).map(lambda i: f"10.244.{i}.0/24"),      # valid (and often shared)
    st.integers(0, 5).map(lambda i: f"10.244.{i}.7/24"),      # host bits set
    st.integers(0, 2).map(lambda i: f"10.244.{i}.0/25"),      # wrong size
    st.integers(0, 2).map(lambda i: f"10.99.{i}.0/24"),       # outside
    st.just("10.244.0.0/16"),                                 # the whole range
)
node_sets = st.dictionaries(
    st.integers(0, 30).map(lambda i: f"node-{i:02d}"),
    st.one_of(st.just([]), st.lists(cidr_texts, min_size=1, max_size=1)),
    min_size=1, max_size=8,
)


def stored(name: str, cidrs: list[str]) -> dict:
    spec = {"podCIDR": cidrs[0], "podCIDRs": cidrs} if cidrs else {}
    return {"apiVersion": "v1", "kind": "Node", "spec": spec,
            "metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": "2026-12-01T00:00:00Z"}}


def webhook_verdicts(nodes: dict[str, list[str]]) -> set[str]:
    bad = set()
    for name, cidrs in nodes.items():
        if not cidrs:
            continue
        index = NodeCidrIndex()
        for other, theirs in nodes.items():
            model = node_model(stored(other, theirs))
            if other != name and model is not None:
                index.set(other, model.networks)
        view = ClusterView(cluster_cidr=CLUSTER, cidr_source="test", nodes=index)
        new, old = stored(name, cidrs), stored(name, [])
        if any(f.severity is Severity.ERROR for f in review_node("UPDATE", new, old, view)):
            bad.add(name)
    return bad


def check_verdicts(nodes: dict[str, list[str]]) -> tuple[set[str], set[str]]:
    report = check_documents([(n, stored(n, c)) for n, c in nodes.items()], cluster_cidr=CLUSTER,
                             cidr_source="test", mask_v4=24, mask_v6=64, settings=RuleSettings())
    bad = {o.name for o in report.objects
           if any(f.severity is Severity.ERROR and f.code != "NoPodCIDR" for f in o.findings)}
    missing = {o.name for o in report.objects if any(f.code == "NoPodCIDR" for f in o.findings)}
    return bad, missing


def doctor_verdicts(nodes: dict[str, list[str]]) -> tuple[set[str], set[str]]:
    source = CidrSource("--cluster-cidr flag", CLUSTER, "10.244.0.0/16", SourceKind.FLAG)
    facts = ClusterFacts(resolution=resolve([source]),
                         configmaps=(ConfigMapFacts("kube-flannel", "kube-flannel-cfg", NET_CONF),),
                         nodes=tuple(NodeFacts(n, tuple(c)) for n, c in nodes.items()), pods=())
    report = diagnose(facts)
    bad = {row.name for row in report.nodes if row.problems and row.pod_cidrs}
    missing = {row.name for row in report.nodes if row.problems and not row.pod_cidrs}
    return bad, missing


@settings(max_examples=120, deadline=None)
@given(node_sets)
def test_property_the_webhook_check_and_doctor_name_the_same_nodes(nodes: dict[str, list[str]]) -> None:
    hook = webhook_verdicts(nodes)
    checked, check_missing = check_verdicts(nodes)
    doctored, doctor_missing = doctor_verdicts(nodes)
    assert hook == checked == doctored, (nodes, hook, checked, doctored)
    assert check_missing == doctor_missing == {n for n, c in nodes.items() if not c}

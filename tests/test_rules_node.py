"""The Node rule (kubernetes pkg/apis/core/validation ValidateNode/ValidateNodeUpdate, nodeipam)."""

from __future__ import annotations

import ipaddress

import pytest
from conftest import make_view, node

from webhook.core.rules import Severity
from webhook.core.rules.node import review_node


def errs(findings):
    return [f.code for f in findings if f.severity is Severity.ERROR]


NODES = {"worker-0001": ["10.244.1.0/24"], "worker-0002": ["10.244.2.0/24"]}

CASES = [
    ("no-podcidr-admitted", node("w"), []),
    ("valid", node("w", "10.244.3.0/24"), []),
    ("podcidr-only-is-podcidrs", node("w", podcidr="10.244.3.0/24"), []),
    # field report #1/#2: outside the cluster-cidr (100.244.x vs 10.244.0.0/16).
    ("outside", node("w", "100.244.1.0/24"), ["OutsideClusterCIDR"]),
    # field report #5 (flannel#1549): the whole range patched on a node.
    ("whole-range", node("w", "10.244.0.0/16"), ["WrongSize", "OverlapsNode", "OverlapsNode"]),
    ("wrong-size", node("w", "10.244.3.0/25"), ["WrongSize"]),
    # the seed: a worker patched to a podCIDR another node already has.
    ("duplicate", node("w", "10.244.1.0/24"), ["OverlapsNode"]),
    ("host-bits", node("w", "10.244.3.1/24"), ["InvalidPodCIDR"]),
    ("garbage", node("w", "not-a-cidr"), ["InvalidPodCIDR"]),
    ("spaces", node("w", " 10.244.3.0/24"), ["InvalidPodCIDR"]),
    ("leading-zero", node("w", "10.244.03.0/24"), ["InvalidPodCIDR"]),
    ("mapped-v6", node("w", "::ffff:10.244.3.0/120"), ["InvalidPodCIDR"]),
    # pkg/apis/core/v1/conversion.go: podCIDR wins, podCIDRs become [podCIDR] (a warning, not an error).
    ("podcidr-ne-podcidrs0", node("w", "10.244.3.0/24", podcidr="10.244.4.0/24"), []),
    # field report #8: flannel "pod cidrs should be IPv4/IPv6 only or dualstack".
    ("three", node("w", "10.244.3.0/24", "fd00::/64", "10.244.4.0/24"),
     ["TooManyPodCIDRs", "DuplicateFamily", "FamilyNotInCluster"]),
    ("two-v4", node("w", "10.244.3.0/24", "10.244.4.0/24"), ["DuplicateFamily"]),
    ("v6-in-v4-cluster", node("w", "10.244.3.0/24", "fd00::/64"), ["FamilyNotInCluster"]),
]


@pytest.mark.parametrize(("obj", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_node_create_table(obj, expected):
    assert errs(review_node("CREATE", obj, None, make_view(nodes=NODES))) == expected


DUAL_NODES = {"a": ["10.244.1.0/24", "fd00:10:244:1::/64"]}


@pytest.mark.parametrize(("cidrs", "expected"), [
    (("10.244.2.0/24", "fd00:10:244:2::/64"), []),
    # kube-controller-manager pairs podCIDRs[i] with the i-th cluster-cidr (range_allocator.go).
    (("fd00:10:244:2::/64", "10.244.2.0/24"), ["FamilyOrder"]),
    (("fd00:10:244:2::/64",), ["FamilyOrder"]),
    (("10.244.2.0/24", "fd00:10:244:1::/64"), ["OverlapsNode"]),
    (("10.244.2.0/24", "fd00:10:245::/64"), ["OutsideClusterCIDR"]),
    (("10.244.2.0/24", "fd00:10:244:2::/80"), ["WrongSize"]),
])
def test_node_dual_stack(cidrs, expected):
    view = make_view("10.244.0.0/16,fd00:10:244::/56", nodes=DUAL_NODES)
    assert errs(review_node("CREATE", node("b", *cidrs), None, view)) == expected


def test_single_family_node_in_dual_stack_cluster_warns():
    view = make_view("10.244.0.0/16,fd00:10:244::/56")
    findings = review_node("CREATE", node("b", "10.244.2.0/24"), None, view)
    assert [f.code for f in findings] == ["MissingFamily"]


def test_overlap_message_names_the_other_node_and_a_free_subnet():
    [f] = review_node("CREATE", node("worker-0003", "10.244.1.0/24"), None, make_view(nodes=NODES))
    assert "worker-0001" in f.summary
    # first_free skips 10.244.0.0/24? no: it is free; the fix names a real free /24.
    assert "kubectl patch node worker-0003" in f.fix
    assert '"podCIDR":"10.244.0.0/24"' in f.fix


def test_changing_a_set_podcidr_is_refused_as_the_api_server_does():
    # pkg/apis/core/validation ValidateNodeUpdate: "may not change podCIDR except from "" to valid".
    old = node("w", "10.244.3.0/24")
    new = node("w", "10.244.4.0/24")
    findings = review_node("UPDATE", new, old, make_view(nodes=NODES))
    assert errs(findings) == ["PodCIDRImmutable"]
    assert "kubectl delete node w" in findings[0].fix


def test_setting_a_podcidr_on_update_is_judged():
    # `kubectl patch node worker-0003 -p '{"spec":{"podCIDR":"10.244.1.0/24"}}'` (the seed's fix gone wrong).
    findings = review_node("UPDATE", node("worker-0003", "10.244.1.0/24"), node("worker-0003"),
                           make_view(nodes=NODES))
    assert errs(findings) == ["OverlapsNode"]


def test_unchanged_podcidrs_never_block_a_label_change():
    # A node that already overlaps must still be labelable/taintable: warn, don't deny.
    view = make_view(nodes={"x": ["10.244.1.0/24"], "w": ["10.244.1.0/24"]})
    old = node("w", "10.244.1.0/24")
    new = node("w", "10.244.1.0/24")
    new["metadata"]["labels"]["role"] = "edge"
    findings = review_node("UPDATE", new, old, view)
    assert errs(findings) == []
    assert [f.code for f in findings] == ["OverlapsNode"]
    assert findings[0].summary.startswith("pre-existing")


def test_node_is_not_compared_with_itself():
    view = make_view(nodes={"w": ["10.244.1.0/24"]})
    assert review_node("CREATE", node("w", "10.244.1.0/24"), None, view) == []


def test_custom_mask_size():
    view = make_view("10.244.0.0/16", mask_v4=26)
    assert errs(review_node("CREATE", node("w", "10.244.0.64/26"), None, view)) == []
    assert errs(review_node("CREATE", node("w", "10.244.1.0/24"), None, view)) == ["WrongSize"]


def test_delete_is_never_refused():
    assert review_node("DELETE", None, node("w", "10.244.1.0/24"), make_view(nodes=NODES)) == []


@pytest.mark.parametrize(("key", "value", "expected"), [
    # field report #12 (flannel#712, #1978): flannel's public-ip annotations must be IPs.
    ("flannel.alpha.coreos.com/public-ip-overwrite", "192.168.1.10", []),
    ("flannel.alpha.coreos.com/public-ip-overwrite", "eth0", ["InvalidPublicIP"]),
    ("flannel.alpha.coreos.com/public-ip-overwrite", "fd00::1", ["InvalidPublicIP"]),
    ("flannel.alpha.coreos.com/public-ipv6-overwrite", "fd00::1", []),
    ("flannel.alpha.coreos.com/public-ipv6-overwrite", "10.0.0.1", ["InvalidPublicIP"]),
    ("flannel.alpha.coreos.com/node-public-ip", "10.0.0.1 ", ["InvalidPublicIP"]),
    ("example.com/other", "whatever", []),
])
def test_flannel_public_ip_annotations(key, value, expected):
    obj = node("w", "10.244.3.0/24")
    obj["metadata"]["annotations"] = {key: value}
    assert errs(review_node("CREATE", obj, None, make_view())) == expected


def test_an_unchanged_bad_annotation_does_not_block_other_updates():
    old = node("w", "10.244.3.0/24")
    old["metadata"]["annotations"] = {"flannel.alpha.coreos.com/public-ip-overwrite": "eth0"}
    new = node("w", "10.244.3.0/24")
    new["metadata"]["annotations"] = dict(old["metadata"]["annotations"])
    assert errs(review_node("UPDATE", new, old, make_view())) == []


def test_a_rejoined_node_with_another_cidr_is_warned_about_stale_routes():
    # field report #11 (rancher/rke2#11170, flannel#1850).
    from webhook.control.state import ClusterState

    state = ClusterState(cluster_cidr=make_view().cluster_cidr, cidr_source="test")
    state.record_node(node("w", "10.244.3.0/24"))
    state.forget_node("w")
    findings = review_node("CREATE", node("w", "10.244.7.0/24"), None, state.view())
    assert [f.code for f in findings] == ["RejoinedWithNewCIDR"]
    assert "10.244.3.0/24" in findings[0].summary
    assert review_node("CREATE", node("w", "10.244.3.0/24"), None, state.view()) == []


def test_podcidr_and_podcidrs_disagreeing_are_read_as_the_api_servers_v1_conversion_stores_them():
    """pkg/apis/core/v1/conversion.go Convert_v1_NodeSpec_To_core_NodeSpec: podCIDR is authoritative."""
    from webhook.core.nodemodel import node_model, pod_cidrs

    obj = node("w", "10.244.3.0/24", "fd00::/64", podcidr="10.244.4.0/24")
    assert pod_cidrs(obj) == ["10.244.4.0/24"]
    assert node_model(obj).networks == (ipaddress.ip_network("10.244.4.0/24"),)
    found = review_node("CREATE", obj, None, make_view(nodes=NODES))
    assert [f.code for f in found if f.severity is Severity.WARNING] == ["PodCIDRsDropped"]
    # Only podCIDR set: podCIDRs = [podCIDR].
    assert pod_cidrs({"metadata": {"name": "w"}, "spec": {"podCIDR": "10.244.5.0/24"}}) == ["10.244.5.0/24"]


def test_a_podcidr_with_host_bits_occupies_its_network_in_every_reader():
    """The webhook's index, check and doctor read a Node the same way (webhook/core/nodemodel.py)."""
    from webhook.core.nodemodel import node_model

    model = node_model(node("w", "10.244.1.5/24"))
    assert model is not None and model.networks == (ipaddress.ip_network("10.244.1.0/24"),)


def test_family_order_is_refused_as_kube_controller_manager_pairs_by_position():
    """range_allocator.go occupyCIDRs: podCIDRs[i] is occupied in the i-th cluster-cidr's set."""
    view = make_view("fd00:10:244::/56,10.244.0.0/16")  # an IPv6-first dual-stack cluster
    assert errs(review_node("CREATE", node("b", "fd00:10:244:2::/64", "10.244.2.0/24"), None, view)) == []
    [f] = review_node("CREATE", node("b", "10.244.2.0/24", "fd00:10:244:2::/64"), None, view)
    assert (f.code, f.severity) == ("FamilyOrder", Severity.ERROR)
    assert "podCIDRs[0] is IPv4" in f.summary and "range_allocator.go" in f.detail
    assert '"podCIDRs":["fd00:10:244::/64","10.244.0.0/24"]' in f.fix  # the fix is in the cluster's order

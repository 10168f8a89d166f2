"""A lone podCIDR as kube-controller-manager pairs it (issue 23, item 3).

pkg/controller/nodeipam/ipam/range_allocator.go occupyCIDRs marks podCIDRs[idx] in cidrSets[idx]:
a Node whose only podCIDR is not of the cluster-cidr's first family fails Occupy, and
NewCIDRRangeAllocator returns that error at every start. A podCIDR of the first family alone is
what kube-controller-manager itself never writes on a dual-stack cluster, but it can occupy it:
admitted, with the MissingFamily warning.
"""

from __future__ import annotations

import pytest
from conftest import make_view, node

from webhook.core.rules import Severity
from webhook.core.rules.node import review_node


@pytest.mark.parametrize(("cluster", "cidr", "errors"), [
    ("10.244.0.0/16,fd00:10:244::/56", "fd00:10:244:2::/64", ["FamilyOrder"]),
    ("fd00:10:244::/56,10.244.0.0/16", "10.244.2.0/24", ["FamilyOrder"]),
    ("10.244.0.0/16,fd00:10:244::/56", "10.244.2.0/24", []),
    ("fd00:10:244::/56,10.244.0.0/16", "fd00:10:244:2::/64", []),
])
def test_a_single_podcidr_must_be_of_the_first_family(cluster, cidr, errors):
    findings = review_node("CREATE", node("b", cidr), None, make_view(cluster))
    assert [f.code for f in findings if f.severity is Severity.ERROR] == errors
    if errors:
        (f,) = [f for f in findings if f.code == "FamilyOrder"]
        assert "range_allocator.go occupyCIDRs" in f.detail
        assert f.fix.startswith("leave podCIDR empty") and "kubectl patch node b" in f.fix  # a free pair
    else:
        assert [f.code for f in findings] == ["MissingFamily"]

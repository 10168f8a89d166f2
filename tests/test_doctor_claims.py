"""``doctor`` on flannel-guard's claims (issue 28), from Leases served on the loopback API.

A Lease that is not a claim (a planted one), claims for Nodes that never appeared or that
hold another podCIDR, and the cap on claims waiting for their Node reached: each is one
finding with its fix; a planted Lease is not drawn as reserved in the address space.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from doctor_cluster import DoctorKubeApi
from test_doctor_findings import codes, guard_cluster, only, scenario

from webhook.core.cidr import parse_cidr
from webhook.core.claimpolicy import lease_name
from webhook.core.rules.findings import Severity

NS = "flannel-guard"


def stamp(ago: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def plant(api: DoctorKubeApi, cidr: str, holder: str, *, ago: float = 0.0, name: str | None = None,
          renew: str | None = None) -> None:
    name = name or lease_name(parse_cidr(cidr).network)
    api.leases[(NS, name)] = {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": "7", "uid": f"uid-{name}",
                     "labels": {"app.kubernetes.io/managed-by": "flannel-guard"},
                     "annotations": {"flannel-guard.io/cidr": cidr, "flannel-guard.io/node": holder}},
        "spec": {"holderIdentity": holder, "acquireTime": stamp(ago), "renewTime": renew or stamp(0)}}


def with_leases(*leases: dict[str, Any]) -> Any:
    build = guard_cluster()

    async def go(api: DoctorKubeApi) -> None:
        await build(api)
        for lease in leases:
            plant(api, **lease)
    return go


def reserved_blocks(report: Any) -> int:
    return sum(n for fam in report.address_space for state, n in fam.runs if state == "r")


def test_a_planted_lease_is_reported_and_not_drawn_as_reserved() -> None:
    """The issue's Lease: the whole range, holder a stored node, renewed in 2099."""
    report, _ = scenario(with_leases(
        {"cidr": "10.244.0.0/16", "holder": "cp1", "name": "podcidr-v4-10-244-0-0-16",
         "renew": "2099-01-01T00:00:00Z"},
        {"cidr": "10.244.5.0/24", "holder": "joining"}))       # a join in progress: nothing to say
    f = only(report, "GuardClaimUntrusted")
    assert f.severity is Severity.WARNING
    assert ("podcidr-v4-10-244-0-0-16 (10.244.0.0/16, held by cp1): its CIDR is not of the node mask"
            in f.summary)
    assert f.fixes[0].text == f"kubectl -n {NS} delete lease podcidr-v4-10-244-0-0-16"
    assert "ValidatingAdmissionPolicy" in f.fixes[1].text
    assert "GuardClaimsForUnseenNodes" not in codes(report)
    assert reserved_blocks(report) == 1                          # the join's block only


def test_claims_for_unseen_names_and_a_node_holding_another_podcidr() -> None:
    report, _ = scenario(with_leases(
        *({"cidr": f"10.244.{10 + i}.0/24", "holder": f"ghost-{i}", "ago": 600} for i in range(6)),
        {"cidr": "10.244.30.0/24", "holder": "cp1", "ago": 600},   # cp1 is stored with 10.244.0.0/24
        {"cidr": "10.244.0.0/24", "holder": "cp1", "ago": 600}))  # its own: not pending
    f = only(report, "GuardClaimsForUnseenNodes")
    assert "7 podCIDR claim(s) older than 30 s" in f.summary and "and 2 more" in f.summary
    assert "10.244.10.0/24 for ghost-0" in f.summary
    assert sorted(f.subjects) == ["cp1", *(f"ghost-{i}" for i in range(6))]
    assert "--client-ca" in f.fixes[0].text
    assert "GuardPendingCapReached" not in codes(report)


def test_the_cap_reached_is_reported() -> None:
    report, _ = scenario(with_leases(*({"cidr": f"10.244.{1 + i}.0/24", "holder": f"ghost-{i}"}
                                       for i in range(64))))
    f = only(report, "GuardPendingCapReached")
    assert ("64 IPv4 podCIDR claim(s) wait for their Node: the cap of 64 (the smaller of 64 and 25% of the"
            " pool)" in f.summary)
    assert "assigning loop" in f.detail

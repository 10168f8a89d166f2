"""doctor reports which protections hold while flannel-guard is down (issue 22).

Each scenario lays flannel-guard out on the loopback API as the manifests install it
(tests/doctor_cluster.py ``guard_objects``), with or without the split Node webhook, the
admission-policy component and its parameter ConfigMap; ``gather`` reads it over HTTP and the
pure diagnosis reports one row per protection and a finding for each gap.
"""

from __future__ import annotations

import json

from doctor_cluster import DoctorKubeApi
from test_doctor_findings import codes, guard_cluster, only, scenario

from webhook.doctor.json_report import report_document
from webhook.doctor.report import Report
from webhook.doctor.text_report import render_text

POLICIES = ("flannel-guard-node-podcidrs", "flannel-guard-leases")
CURRENT = {"clusterCIDRs": "10.244.0.0/16", "nodeCIDRMaskSizeIPv4": "24", "nodeCIDRMaskSizeIPv6": "64",
           "source": "kube-controller-manager --cluster-cidr", "observedAt": "2026-12-06T20:00:00Z"}


def rows(report: Report) -> dict[str, tuple[str, str]]:
    assert report.guard is not None
    return {p.name: (p.kind, p.state) for p in report.guard.protections}


def test_the_default_install_fails_closed_on_pod_cidr_writes_only() -> None:
    report, _ = scenario(guard_cluster())
    assert report.findings == ()
    assert rows(report) == {
        "configmaps.flannel-guard.io": ("validating webhook", "failurePolicy Fail"),
        "podcidrs.nodes.flannel-guard.io": ("validating webhook", "failurePolicy Fail"),
        "nodes.flannel-guard.io": ("validating webhook", "failurePolicy Ignore"),
        "nodes.mutate.flannel-guard.io": ("mutating webhook", "failurePolicy Ignore"),
        "flannel-guard-node-podcidrs": ("admission policy", "not installed"),
        "flannel-guard-leases": ("admission policy", "not installed"),
    }
    text = render_text(report)
    assert "PROTECTIONS (what holds while flannel-guard is down)" in text
    assert "while no replica answers: the writes it matches are refused" in text
    doc = report_document(report)
    assert {p["name"]: p["state"] for p in doc["flannelGuard"]["protections"]}[
        "podcidrs.nodes.flannel-guard.io"] == "failurePolicy Fail"
    json.dumps(doc)


def test_an_install_from_before_the_split_fails_open_and_says_so() -> None:
    report, _ = scenario(guard_cluster(split=False))
    f = only(report, "GuardPodCIDRWritesFailOpen")
    assert "a podCIDR that another node holds can be stored" in f.summary
    assert "kubectl apply -k manifests/" in f.fixes[0].text


def test_the_admission_policy_with_current_parameters_is_active() -> None:
    report, api = scenario(guard_cluster(policies=POLICIES, params=CURRENT))
    assert report.findings == ()
    got = rows(report)
    assert got["flannel-guard-node-podcidrs"] == ("admission policy", "active")
    assert got["flannel-guard-leases"] == ("admission policy", "active")
    assert got["ConfigMap flannel-guard/flannel-guard-policy-params"] == ("policy parameters", "current")
    paths = {r.path for r in api.requests}
    binding = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings/flannel-guard-leases"
    assert binding in paths


def test_the_admission_policy_without_its_parameters_checks_nothing() -> None:
    report, _ = scenario(guard_cluster(policies=POLICIES))
    f = only(report, "GuardPolicyParamsMissing")
    assert "allows every Node write (parameterNotFoundAction Allow)" in f.summary
    assert rows(report)["ConfigMap flannel-guard/flannel-guard-policy-params"][1] == "MISSING"


def test_stale_parameters_name_both_ranges() -> None:
    stale = CURRENT | {"clusterCIDRs": "10.42.0.0/16"}
    report, _ = scenario(guard_cluster(policies=POLICIES, params=stale))
    f = only(report, "GuardPolicyParamsStale")
    assert "clusterCIDRs 10.42.0.0/16" in f.summary and "the cluster-cidr is 10.244.0.0/16" in f.summary
    assert rows(report)["ConfigMap flannel-guard/flannel-guard-policy-params"][1] == "STALE"


def test_a_policy_without_its_binding_is_inactive() -> None:
    async def build(api: DoctorKubeApi) -> None:
        await guard_cluster(policies=POLICIES, params=CURRENT)(api)
        del api.objects["validatingadmissionpolicybindings", "", "flannel-guard-node-podcidrs"]

    report, _ = scenario(build)
    assert rows(report)["flannel-guard-node-podcidrs"] == ("admission policy", "INACTIVE")
    assert "GuardPolicyParamsMissing" not in codes(report)


def test_flannel_guard_down_says_what_the_operator_sees() -> None:
    report, _ = scenario(guard_cluster(ready=0))
    f = only(report, "GuardNoEndpoints")
    assert "podcidrs.nodes.flannel-guard.io" in f.detail
    assert "CIDRAssignmentFailed" in f.detail and "kubelet registration goes through" in f.detail

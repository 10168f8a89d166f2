"""The PolicyReports built from flannel-guard's findings (webhook/core/policyreport.py).

Validated against the v1alpha2 openAPIV3Schema of the wg-policy prototypes' CRDs
(tests/fixtures/policyreport/, copied unchanged), made strict: a field the CRD does not
declare would be pruned by the API server silently, so here it fails. Findings are the real
rules' (``check``'s pipeline over manifests); the bound is tested with 15,000 Nodes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from webhook.check import check_documents
from webhook.core import policyreport as pr
from webhook.core.cidr import parse_cidr_list
from webhook.core.rules import Finding, RuleSettings, Severity

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "tests" / "fixtures" / "policyreport"
CIDR = "10.244.0.0/16"
NOW = 1_800_000_000


def strict(schema: Any) -> Any:
    """additionalProperties: false wherever the schema lists properties and allows no others."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema


def crd_schema(plural: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / f"wgpolicyk8s.io_{plural}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: the API server's own
    schema["required"] = ["apiVersion", "kind", "metadata"]
    return schema


def validate(report: dict[str, Any]) -> None:
    plural = {"ClusterPolicyReport": "clusterpolicyreports", "PolicyReport": "policyreports"}[report["kind"]]
    assert report["apiVersion"] == pr.API_VERSION
    jsonschema.Draft7Validator(crd_schema(plural)).validate(report)


def judged(docs: list[dict[str, Any]]) -> list[pr.Judged]:
    report = check_documents([("test.yaml", d) for d in docs], cluster_cidr=parse_cidr_list(CIDR),
                             cidr_source="test", mask_v4=24, mask_v6=64,
                             settings=RuleSettings(unknown_cidr=Severity.WARNING))
    out = []
    for o in report.objects:  # check names a ConfigMap namespace/name
        namespace, _, name = o.name.rpartition("/")
        out.append(pr.Judged(o.kind, name, namespace=namespace, findings=o.findings))
    return out


def node(name: str, cidr: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {"podCIDR": cidr}}


def flannel_cm(network: str) -> dict[str, Any]:
    text = (ROOT / "tests" / "fixtures" / "kube-flannel-cfg.yaml").read_text().replace(CIDR, network)
    return yaml.safe_load(text)


def test_reports_validate_against_the_crds_with_pass_fail_and_fix() -> None:
    objects = judged([node("good", "10.244.1.0/24"), node("outside", "192.168.0.0/24"),
                      flannel_cm("10.99.0.0/16")])
    cluster = pr.cluster_policy_report(objects, seconds=NOW)
    validate(cluster)
    assert cluster["metadata"]["name"] == pr.CLUSTER_REPORT and "namespace" not in cluster["metadata"]
    by_name = {}
    for r in cluster["results"]:
        by_name.setdefault(r["resources"][0]["name"], []).append(r)
    assert [r["result"] for r in by_name["good"]] == ["pass"]
    assert {r["result"] for r in by_name["outside"]} == {"fail"}
    assert {r["result"] for r in by_name["kube-flannel-cfg"]} == {"fail"}
    for r in by_name["outside"] + by_name["kube-flannel-cfg"]:
        assert r["rule"] and r["rule"] != pr.PASS_RULE
        assert r["properties"]["fix"], r
    assert cluster["summary"]["pass"] == 1 and cluster["summary"]["fail"] >= 2
    # The ConfigMap also in a PolicyReport of its namespace; the Nodes are cluster-scoped.
    (namespaced,) = pr.policy_reports(objects, seconds=NOW)
    validate(namespaced)
    assert namespaced["metadata"]["namespace"] == "kube-flannel"
    assert {r["resources"][0]["kind"] for r in namespaced["results"]} == {"ConfigMap"}


def test_the_strict_schema_refuses_an_unknown_field() -> None:
    """A control: a misspelt field would be pruned by the API server, so it fails here."""
    report = pr.cluster_policy_report(judged([node("a", "192.168.0.0/24")]), seconds=NOW)
    broken = copy.deepcopy(report)
    broken["results"][0]["fixes"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    broken = copy.deepcopy(report)
    broken["results"][0]["result"] = "failed"
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_a_fixed_node_turns_to_pass_and_an_unchanged_cluster_makes_the_same_object() -> None:
    before = pr.cluster_policy_report(judged([node("n1", "192.168.0.0/24"), node("n2", "10.244.2.0/24")]),
                                      seconds=NOW)
    again = pr.cluster_policy_report(judged([node("n2", "10.244.2.0/24"), node("n1", "192.168.0.0/24")]),
                                     seconds=NOW)
    assert again == before  # input order does not matter: no write when nothing changed
    after = pr.cluster_policy_report(judged([node("n1", "10.244.1.0/24"), node("n2", "10.244.2.0/24")]),
                                     seconds=NOW)
    assert before["summary"]["fail"] >= 1 and after["summary"] == {**after["summary"], "fail": 0, "pass": 2}
    assert {r["result"] for r in after["results"]} == {"pass"}


def test_15000_nodes_make_a_bounded_report() -> None:
    finding = Finding(Severity.ERROR, "node-podcidr-outside-cluster-cidr", "podCIDR outside the cluster-cidr",
                      "x" * 5000, "kubectl delete node ...")
    objects = [pr.Judged("Node", f"node-{i:05d}", findings=[finding] if i % 10 == 0 else [])
               for i in range(15_000)]
    report = pr.cluster_policy_report(objects, seconds=NOW)
    validate(report)
    size = len(json.dumps(report))
    assert size < 1024 * 1024, size  # etcd's limit is 1.5 MiB
    assert len(report["results"]) == pr.MAX_RESULTS
    assert report["summary"]["fail"] == 1_500 and report["summary"]["pass"] == 13_500
    assert report["metadata"]["annotations"][pr.OMITTED_ANNOTATION] == str(15_000 - pr.MAX_RESULTS)
    # The failures are the ones kept: passes are left out first.
    assert [r["result"] for r in report["results"]].count("fail") == pr.MAX_RESULTS
    assert all(len(v) <= pr.MAX_TEXT for r in report["results"] for v in r.get("properties", {}).values())

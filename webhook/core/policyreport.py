"""PolicyReports (``wgpolicyk8s.io/v1alpha2``) of flannel-guard's findings: pure, no I/O.

The wg-policy prototypes' report types are what Kyverno, Trivy, Falco and kube-bench write and
what Policy Reporter shows. flannel-guard's judgement of each Node and flannel ConfigMap
becomes results there:

- one ``ClusterPolicyReport`` (:data:`CLUSTER_REPORT`) with a result per Node and per
  flannel ConfigMap: ``pass`` when nothing was found, else one ``fail`` (an error: what the
  webhook refuses) or ``warn`` per finding, its rule the finding's code, its message the
  summary and detail, the fix in ``properties.fix``;
- one ``PolicyReport`` per namespace holding a flannel ConfigMap, with that ConfigMap's
  results, as Kyverno keeps namespaced resources' results in their namespace.

Bounded whatever the cluster: at most :data:`MAX_RESULTS` results in a report (failures
first, then warnings, then passes; what is left out is still counted in ``summary`` and
named by :data:`OMITTED_ANNOTATION`), and every text cut at :data:`MAX_TEXT` characters,
so 15,000 Nodes make a report under 1 MiB even with every text at its cap (etcd takes 1.5 MiB).
Results are in a stable order (by outcome, then kind, namespace, name, rule), so an
unchanged cluster makes an identical object and the writer can skip the write.

The writer (the leader, from the watches, opt-in when the CRD is installed) is not here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from webhook.core.rules import Finding, Severity

__all__ = [
    "API_VERSION",
    "CLUSTER_REPORT",
    "MAX_RESULTS",
    "MAX_TEXT",
    "OMITTED_ANNOTATION",
    "Judged",
    "cluster_policy_report",
    "policy_reports",
]

API_VERSION = "wgpolicyk8s.io/v1alpha2"
CLUSTER_REPORT = "flannel-guard"
POLICY = "flannel-guard"
SOURCE = "flannel-guard"
CATEGORY = "Pod network"
MAX_RESULTS = 500
MAX_TEXT = 300
OMITTED_ANNOTATION = "flannel-guard.io/omitted-results"
LABELS = {"app.kubernetes.io/managed-by": "flannel-guard", "app.kubernetes.io/part-of": "flannel-guard"}
# The rule of a pass: nothing any rule found.
PASS_RULE = "podcidr-and-network"

_ORDER = {"fail": 0, "warn": 1, "pass": 2}


@dataclass(frozen=True)
class Judged:
    """One object flannel-guard judged and what it found (an empty list: it passes)."""

    kind: str  # "Node" or "ConfigMap"
    name: str
    namespace: str = ""
    uid: str = ""
    findings: Sequence[Finding] = ()


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _resource(obj: Judged) -> dict[str, str]:
    ref = {"apiVersion": "v1", "kind": obj.kind, "name": obj.name}
    if obj.namespace:
        ref["namespace"] = obj.namespace
    if obj.uid:
        ref["uid"] = obj.uid
    return ref


def results_of(obj: Judged, *, seconds: int) -> list[dict[str, Any]]:
    """The results of one object: a pass, or one fail/warn per finding."""
    base = {"policy": POLICY, "source": SOURCE, "category": CATEGORY, "scored": True,
            "resources": [_resource(obj)], "timestamp": {"seconds": int(seconds), "nanos": 0}}
    if not obj.findings:
        return [{**base, "rule": PASS_RULE, "result": "pass", "severity": "info",
                 "message": f"{obj.kind} {obj.name}: consistent with the cluster-cidr"}]
    out = []
    for f in obj.findings:
        failed = f.severity is Severity.ERROR
        properties = {k: _cut(v) for k, v in (("fix", f.fix), ("detail", f.detail)) if v}
        result = {**base, "rule": f.code, "result": "fail" if failed else "warn",
                  "severity": "high" if failed else "medium",
                  "message": _cut(f"{obj.kind} {obj.name}: {f.summary}")}
        if properties:
            result["properties"] = properties
        out.append(result)
    return out


def _key(result: dict[str, Any]) -> tuple[Any, ...]:
    ref = result["resources"][0]
    return (_ORDER[result["result"]], ref["kind"], ref.get("namespace", ""), ref["name"], result["rule"])


def _report(kind: str, name: str, namespace: str, objects: Iterable[Judged], seconds: int) -> dict[str, Any]:
    results = sorted((r for obj in objects for r in results_of(obj, seconds=seconds)), key=_key)
    summary = {"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 0}
    for r in results:
        summary[r["result"]] += 1
    metadata: dict[str, Any] = {"name": name, "labels": dict(LABELS)}
    if namespace:
        metadata["namespace"] = namespace
    omitted = len(results) - MAX_RESULTS
    if omitted > 0:
        results = results[:MAX_RESULTS]
        metadata["annotations"] = {OMITTED_ANNOTATION: str(omitted)}
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "summary": summary,
            "results": results}


def cluster_policy_report(objects: Iterable[Judged], *, seconds: int) -> dict[str, Any]:
    """The ClusterPolicyReport: every Node and flannel ConfigMap judged."""
    return _report("ClusterPolicyReport", CLUSTER_REPORT, "", objects, seconds)


def policy_reports(objects: Iterable[Judged], *, seconds: int) -> list[dict[str, Any]]:
    """A PolicyReport per namespace of the namespaced objects (the flannel ConfigMaps)."""
    by_namespace: dict[str, list[Judged]] = {}
    for obj in objects:
        if obj.namespace:
            by_namespace.setdefault(obj.namespace, []).append(obj)
    return [_report("PolicyReport", CLUSTER_REPORT, ns, by_namespace[ns], seconds)
            for ns in sorted(by_namespace)]

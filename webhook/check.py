"""``flannel-guard check``: the admission rules applied to manifest files (CI, GitOps).

Reads multi-document YAML or JSON (kube-flannel.yml, Node manifests, the output
of ``kubectl get nodes -o json``) and judges every flannel ConfigMap and Node as
if it were being created. Nodes in the files form the node index, so two Nodes
sharing a podCIDR are both reported.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from webhook.core.claims import suggest_free
from webhook.core.nodeindex import NodeCidrIndex
from webhook.core.nodemodel import NodeModel, node_model
from webhook.core.rules import ClusterView, Finding, ReviewInput, RuleSettings, Severity, review

__all__ = ["CheckReport", "InputError", "check_documents", "load_documents", "render"]


class InputError(Exception):
    """A file could not be read or parsed (exit code 2)."""


@dataclass
class ObjectReport:
    source: str
    kind: str
    name: str
    findings: list[Finding]


@dataclass
class CheckReport:
    objects: list[ObjectReport] = field(default_factory=list)
    cluster_cidr: str = "unknown"
    #: ``--strict``: nothing checked, or no cluster-cidr to check against, fails too.
    strict: bool = False

    @property
    def violations(self) -> int:
        return sum(1 for o in self.objects for f in o.findings if f.severity is Severity.ERROR)

    @property
    def gaps(self) -> list[str]:
        """Why a clean result would prove nothing (``--strict`` fails on these)."""
        out = []
        if not self.objects:
            out.append("no flannel ConfigMap or Node found in the input")
        if self.cluster_cidr == "unknown":
            out.append("the cluster-cidr is unknown (give --cluster-cidr)")
        return out

    @property
    def exit_code(self) -> int:
        return 1 if self.violations or (self.strict and self.gaps) else 0


def _flatten(doc: object) -> Iterator[dict[str, Any]]:
    if not isinstance(doc, dict):
        return
    items = doc.get("items")
    if isinstance(items, list) and str(doc.get("kind", "")).endswith("List"):
        for item in items:
            yield from _flatten(item)
    else:
        yield doc


def load_documents(paths: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    """Every Kubernetes object in ``paths`` (``-`` is standard input), with where it came from."""
    out: list[tuple[str, dict[str, Any]]] = []
    for path in paths:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: cannot read: {e}") from None
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as e:
            raise InputError(f"{path}: not YAML or JSON: {str(e)[:300]}") from None
        for i, doc in enumerate(docs):
            for obj in _flatten(doc):
                out.append((f"{path}#{i + 1}", obj))
    return out


def check_documents(
    objects: list[tuple[str, dict[str, Any]]],
    *,
    cluster_cidr: tuple[Any, ...] | None,
    cidr_source: str,
    mask_v4: int,
    mask_v6: int,
    settings: RuleSettings,
    strict: bool = False,
) -> CheckReport:
    """Judge every flannel ConfigMap and Node among ``objects``.

    Nodes read from the API (a uid or a creationTimestamp: ``kubectl get nodes -o json``)
    are stored: their podCIDRs cannot change, so a fix for one of them re-registers the
    node, and one without a podCIDR is a finding (flannel on it fails with ``pod cidr not
    assigned``). Each fix names its own free subnet: no two nodes are told the same one.
    """
    index = NodeCidrIndex()
    for _, obj in objects:
        model = node_model(obj) if obj.get("kind") == "Node" else None
        if model is not None:
            index.set(model.name, model.networks)  # as the webhook's index reads them
    view = ClusterView(cluster_cidr=cluster_cidr, cidr_source=cidr_source, nodes=index,
                       mask_v4=mask_v4, mask_v6=mask_v6)
    # In a file, a ConfigMap without a namespace is judged by its name alone.
    names = {name for _, name in settings.flannel_configmaps}
    report = CheckReport(cluster_cidr=view.describe_cidr(), strict=strict)
    handed = NodeCidrIndex()  # subnets already named in a fix
    for source, obj in objects:
        kind = obj.get("kind")
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        name = str(meta.get("name", ""))
        namespace = meta.get("namespace")
        if kind == "ConfigMap":
            if namespace is None and name in names:
                namespace = next(ns for ns, n in sorted(settings.flannel_configmaps) if n == name)
            if (namespace, name) not in settings.flannel_configmaps:
                continue
        elif kind != "Node":
            continue
        req = ReviewInput(kind=str(kind), operation="CREATE", namespace=namespace, name=name,
                          object=obj, old_object=None)
        findings = review(req, view, settings)
        model = node_model(obj) if kind == "Node" else None
        if model is not None and model.stored:
            findings = _stored_node_findings(model, findings, view, index, handed)
        report.objects.append(ObjectReport(source, str(kind),
                                           f"{namespace}/{name}" if namespace else name, findings))
    return report


def _free_for(view: ClusterView, index: NodeCidrIndex, handed: NodeCidrIndex, node: str) -> list[Any]:
    """A free subnet per cluster-cidr family, none used, none named for another node already."""
    free = suggest_free(view.cluster_cidr, view.mask_for, index, handed)
    if free:
        handed.set(node, free)
    return free


_MOVE = {"OverlapsNode", "OutsideClusterCIDR", "WrongSize", "InvalidPodCIDR", "FamilyNotInCluster",
         "TooManyPodCIDRs", "DuplicateFamily"}


def _stored_node_findings(model: NodeModel, findings: list[Finding], view: ClusterView,
                          index: NodeCidrIndex, handed: NodeCidrIndex) -> list[Finding]:
    """Fixes that work on a stored Node: its podCIDR is immutable once set."""
    name = model.name
    if not model.has_pod_cidr:
        free = _free_for(view, index, handed, name) if view.cluster_cidr else []
        fix = (f"`kubectl patch node {name} -p '{_patch(free)}'`, or let flannel-guard or"
               " kube-controller-manager allocate it" if free else
               "let flannel-guard or kube-controller-manager allocate one (--allocate-node-cidrs)")
        return [*findings, Finding(
            Severity.ERROR, "NoPodCIDR", f"node {name} has no podCIDR.",
            f"flannel on it fails with 'failed to acquire lease: node \"{name}\" pod cidr not assigned'.",
            fix)]
    if not any(f.code in _MOVE for f in findings):
        return findings
    free = _free_for(view, index, handed, name) if view.cluster_cidr else []
    move = (f"a set podCIDR cannot change: `kubectl drain {name} --ignore-daemonsets`,"
            f" `kubectl delete node {name}`, restart its kubelet to register again; it then gets"
            f" a free podCIDR{' (' + ','.join(map(str, free)) + ' is free)' if free else ''}.")
    return [Finding(f.severity, f.code, f.summary, f.detail, move) if f.code in _MOVE else f
            for f in findings]


def _patch(cidrs: list[Any]) -> str:
    values = [str(c) for c in cidrs]
    return json.dumps({"spec": {"podCIDR": values[0], "podCIDRs": values}}, separators=(",", ":"))


def render(report: CheckReport, output: str) -> str:
    if output == "json":
        return json.dumps({
            "clusterCIDR": report.cluster_cidr,
            "violations": report.violations,
            "gaps": report.gaps,
            "objects": [
                {
                    "source": o.source, "kind": o.kind, "name": o.name,
                    "findings": [
                        {"severity": f.severity.value, "code": f.code, "summary": f.summary,
                         "detail": f.detail, "fix": f.fix}
                        for f in o.findings
                    ],
                }
                for o in report.objects
            ],
        }, indent=2)
    lines = [f"cluster-cidr: {report.cluster_cidr}"]
    for o in report.objects:
        errs = [f for f in o.findings if f.severity is Severity.ERROR]
        status = "FAIL" if errs else ("WARN" if o.findings else "ok")
        lines.append(f"{status:4}  {o.kind} {o.name}  ({o.source})")
        for f in o.findings:
            lines.append(f"      {f.severity.value}: {f.summary}")
            if f.detail:
                lines.append(f"        {f.detail}")
            if f.fix:
                lines.append(f"        fix: {f.fix}")
    if not report.objects:
        lines.append("no flannel ConfigMap or Node found in the input")
    if report.strict:
        lines.extend(f"--strict: {gap}" for gap in report.gaps)
    lines.append(f"{report.violations} violation(s)")
    return "\n".join(lines)

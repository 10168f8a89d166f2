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

from webhook.core.cidr import IPNetwork
from webhook.core.cidrset import CidrSetError
from webhook.core.dualstack import DualStackAllocator
from webhook.core.nodeindex import NodeCidrIndex
from webhook.core.nodemodel import NodeModel, node_model
from webhook.core.rules import ClusterView, Finding, ReviewInput, RuleSettings, Severity, review

__all__ = ["CheckReport", "InputError", "Location", "check_documents", "load_documents", "render"]


class InputError(Exception):
    """A file could not be read or parsed (exit code 2)."""


@dataclass(frozen=True)
class Location:
    """Where an object starts: the file (``-`` for standard input) and its 1-based line.

    Kept apart (not only as ``file:line`` text) for the reports built on top: JUnit, SARIF.
    ``line`` 0: unknown (an object handed in without a file).
    """

    file: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class ObjectReport:
    location: Location
    kind: str
    name: str
    findings: list[Finding]

    @property
    def source(self) -> str:
        return str(self.location)


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


def _flatten(doc: object, node: yaml.Node) -> Iterator[tuple[dict[str, Any], yaml.Node]]:
    """Each object of a document with the YAML node it was read from (a List's items one by one)."""
    if not isinstance(doc, dict):
        return
    items = doc.get("items")
    if isinstance(items, list) and str(doc.get("kind", "")).endswith("List"):
        item_nodes = _value_node(node, "items")
        for i, item in enumerate(items):
            sub = item_nodes.value[i] if isinstance(item_nodes, yaml.SequenceNode) else node
            yield from _flatten(item, sub)
    else:
        yield doc, node


def _value_node(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v  # the last duplicate wins, as in the constructed dict
    return None


def _documents(text: str) -> Iterator[tuple[object, yaml.Node]]:
    """Every document of ``text`` with its composed node (for the line numbers)."""
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            yield loader.construct_document(node), node
    finally:
        loader.dispose()


def load_documents(paths: Iterable[str]) -> list[tuple[Location, dict[str, Any]]]:
    """Every Kubernetes object in ``paths`` (``-`` is standard input), with the line it starts on."""
    out: list[tuple[Location, dict[str, Any]]] = []
    for path in paths:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: cannot read: {e}") from None
        try:
            docs = list(_documents(text))
        except yaml.YAMLError as e:
            raise InputError(f"{path}: not YAML or JSON: {' '.join(str(e).split())[:300]}") from None
        for doc, node in docs:
            for obj, at in _flatten(doc, node):
                out.append((Location(path, at.start_mark.line + 1), obj))
    return out


def check_documents(
    objects: list[tuple[Location | str, dict[str, Any]]],
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
    assigned``). A Node manifest (no uid: a GitOps repository's) is fixed by the value to write.
    Each fix names its own free subnet, handed out across the whole run as the allocator
    would (:class:`DualStackAllocator`, next-fit, with every podCIDR in the input occupied):
    no two fixes name the same one, and none names a CIDR any node of the input has.
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
    free = _FreeCidrs(view, index)
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
        location = source if isinstance(source, Location) else Location(str(source))
        model = node_model(obj) if kind == "Node" else None
        if model is not None and model.stored:
            findings = _stored_node_findings(model, findings, free)
        elif model is not None:
            findings = _manifest_node_findings(model, findings, free, location)
        findings = [_offline(f) for f in findings]
        report.objects.append(ObjectReport(location, str(kind),
                                           f"{namespace}/{name}" if namespace else name, findings))
    return report


def _offline(finding: Finding) -> Finding:
    """An offline run has no server to start: the unknown cluster-cidr is given on the command line."""
    if finding.code != "ClusterCIDRUnknown":
        return finding
    return Finding(finding.severity, finding.code, finding.summary,
                   "check reads no cluster: the cluster-cidr comes from --cluster-cidr alone.",
                   "give --cluster-cidr CIDR[,CIDR]: kube-controller-manager's --cluster-cidr"
                   " (kubeadm: networking.podSubnet).")


class _FreeCidrs:
    """Free node CIDRs for the fixes of one run, in the allocator's order, never the same twice."""

    def __init__(self, view: ClusterView, index: NodeCidrIndex) -> None:
        self._allocator: DualStackAllocator | None = None
        if view.cluster_cidr:
            try:
                self._allocator = DualStackAllocator.from_index(
                    view.cluster_cidr, index, mask_v4=view.mask_v4, mask_v6=view.mask_v6)
            except (CidrSetError, ValueError):
                self._allocator = None  # a mask that does not fit: the rules say so

    def take(self) -> list[IPNetwork]:
        """One CIDR per cluster-cidr family; empty when there is no cluster-cidr or a range is full."""
        if self._allocator is None:
            return []
        try:
            return list(self._allocator.allocate())
        except CidrSetError:
            return []


_MOVE = {"OverlapsNode", "OutsideClusterCIDR", "WrongSize", "InvalidPodCIDR", "FamilyNotInCluster",
         "TooManyPodCIDRs", "DuplicateFamily"}


def _stored_node_findings(model: NodeModel, findings: list[Finding], free: _FreeCidrs) -> list[Finding]:
    """Fixes that work on a stored Node: its podCIDR is immutable once set."""
    name = model.name
    if not model.has_pod_cidr:
        cidrs = free.take()
        fix = (f"`kubectl patch node {name} -p '{_patch(cidrs)}'`, or let flannel-guard or"
               " kube-controller-manager allocate it" if cidrs else
               "let flannel-guard or kube-controller-manager allocate one (--allocate-node-cidrs)")
        return [*findings, Finding(
            Severity.ERROR, "NoPodCIDR", f"node {name} has no podCIDR.",
            f"flannel on it fails with 'failed to acquire lease: node \"{name}\" pod cidr not assigned'.",
            fix)]
    if not any(f.code in _MOVE for f in findings):
        return findings
    cidrs = free.take()
    move = (f"a set podCIDR cannot change: `kubectl drain {name} --ignore-daemonsets`,"
            f" `kubectl delete node {name}`, restart its kubelet to register again; it then gets"
            f" a free podCIDR{' (' + ','.join(map(str, cidrs)) + ' is free)' if cidrs else ''}.")
    return [Finding(f.severity, f.code, f.summary, f.detail, move) if f.code in _MOVE else f
            for f in findings]


def _manifest_node_findings(model: NodeModel, findings: list[Finding], free: _FreeCidrs,
                            where: Location) -> list[Finding]:
    """A Node manifest not yet applied: the fix is the value to write in the file."""
    if not any(f.code in _MOVE for f in findings):
        return findings
    cidrs = free.take()
    if cidrs:
        values = [str(c) for c in cidrs]
        move = (f"in {where} (Node {model.name}) write spec.podCIDR: {values[0]} and spec.podCIDRs:"
                f" [{', '.join(values)}], or leave both out and let the node be allocated one.")
    else:
        move = (f"in {where} (Node {model.name}) leave spec.podCIDR and spec.podCIDRs out and let"
                " the node be allocated one (no free node CIDR is left to name).")
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
                    "location": {"file": o.location.file, "line": o.location.line},
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

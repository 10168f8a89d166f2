"""What ``doctor`` hands its renderers: findings with their fixes, the tables, the address space."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook.core.cidr import IPNetwork
from webhook.core.rules.findings import Severity
from webhook.doctor.facts import PodFacts

__all__ = [
    "EXIT_FINDINGS",
    "EXIT_HEALTHY",
    "EXIT_UNREADABLE",
    "AddressFamilyMap",
    "CapacityRow",
    "ConfigMapRow",
    "DoctorFinding",
    "Fix",
    "GuardRow",
    "NodeRow",
    "Report",
    "SourceRow",
]

EXIT_HEALTHY, EXIT_FINDINGS, EXIT_UNREADABLE = 0, 1, 2


@dataclass(frozen=True)
class Fix:
    """One step that mends a finding: ``text`` for a person, ``action`` + ``params`` for a script.

    ``alternative_to`` names the action this one replaces (e.g. a ``patch-node`` is the
    alternative to letting a fixed kube-controller-manager allocate): not an extra step.
    """

    action: str
    text: str
    params: Mapping[str, Any] = field(default_factory=dict)
    alternative_to: str = ""

    def to_json(self) -> dict[str, Any]:
        doc = {"action": self.action, **self.params, "text": self.text}
        if self.alternative_to:
            doc["alternativeTo"] = self.alternative_to
        return doc


@dataclass(frozen=True)
class DoctorFinding:
    """Something wrong (or about to go wrong) in the cluster, and how to fix it.

    ``subjects`` lists every object a grouped finding covers (three pods, one restart);
    ``caused_by`` is the code of the root cause when this finding is its symptom.
    """

    severity: Severity
    code: str
    subject: str
    summary: str
    detail: str = ""
    fixes: tuple[Fix, ...] = ()
    root_cause: bool = False
    subjects: tuple[str, ...] = ()
    caused_by: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity.value, "code": self.code, "subject": self.subject,
                "subjects": list(self.subjects) or [self.subject], "rootCause": self.root_cause,
                "causedBy": self.caused_by or None, "summary": self.summary, "detail": self.detail,
                "fixes": [f.to_json() for f in self.fixes]}


@dataclass(frozen=True)
class SourceRow:
    """One place the cluster-cidr is written, its value and how it relates to the proposed one."""

    label: str
    origin: str
    value: str
    status: str


@dataclass(frozen=True)
class CapacityRow:
    """How many node blocks of ``mask`` one cluster-cidr family holds, against the nodes there are."""

    cluster_cidr: IPNetwork
    mask: int
    blocks: int
    nodes: int
    used: int


@dataclass(frozen=True)
class ConfigMapRow:
    """A flannel ConfigMap: its networks, backend, whether flannel accepts it and whether it matches."""

    ref: str
    network: str
    ipv6_network: str
    backend: str
    accepted: bool
    matches: bool | None


@dataclass(frozen=True)
class NodeRow:
    """A Node's podCIDRs and what is wrong with them (empty: ok)."""

    name: str
    pod_cidrs: tuple[str, ...]
    problems: tuple[str, ...]


@dataclass(frozen=True)
class ProtectionRow:
    """One protection (a webhook, an admission policy, the policy's parameters) and its state."""

    kind: str
    name: str
    state: str
    detail: str


@dataclass(frozen=True)
class GuardRow:
    """flannel-guard as doctor saw it (None when it is not installed)."""

    namespace: str
    validating: bool
    mutating: bool
    ready_endpoints: int
    cert_not_after: str | None
    cert_verified: bool | None
    allocator: str
    protections: tuple[ProtectionRow, ...] = ()


@dataclass(frozen=True)
class AddressFamilyMap:
    """One cluster-cidr family cut into node blocks, for the picture.

    ``runs`` is the blocks' states run-length encoded, in address order: ``[state, count]``
    with state ``u`` used, ``f`` free, ``r`` reserved (a flannel-guard Lease, no node yet),
    ``c`` conflicting (two nodes, or a node of the wrong size). ``names`` holds the owner of
    every non-free block, in the same order: the index of its node in the report's node
    table (sorted by name), or text (the nodes that share it, a reservation's holder). ``outside``: nodes
    whose podCIDR of this family lies outside the cluster-cidr. ``shown`` < ``blocks`` when
    the family has more blocks than a page can draw (IPv6), the first ``shown`` are drawn.
    """

    cluster_cidr: IPNetwork
    mask: int
    blocks: int
    shown: int
    runs: tuple[tuple[str, int], ...]
    names: tuple[int | str, ...]
    outside: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"clusterCIDR": str(self.cluster_cidr), "mask": self.mask, "blocks": self.blocks,
                "shown": self.shown, "runs": [[s, n] for s, n in self.runs], "owners": list(self.names),
                "outside": [[n, c] for n, c in self.outside]}


@dataclass(frozen=True)
class Report:
    """The whole diagnosis; the renderers show it."""

    cluster_cidr: tuple[IPNetwork, ...] | None
    cluster_cidr_origin: str
    agree: bool
    sources: tuple[SourceRow, ...]
    controller_manager_found: bool
    allocate_node_cidrs: bool | None
    mask_v4: int
    mask_v6: int
    capacity: tuple[CapacityRow, ...]
    configmaps: tuple[ConfigMapRow, ...]
    nodes: tuple[NodeRow, ...]
    pods_not_ready: tuple[PodFacts, ...]
    pods_seen: int
    findings: tuple[DoctorFinding, ...]
    notes: tuple[str, ...]
    address_space: tuple[AddressFamilyMap, ...] = ()
    guard: GuardRow | None = None

    @property
    def root_cause(self) -> DoctorFinding | None:
        return next((f for f in self.findings if f.root_cause), None)

    @property
    def exit_code(self) -> int:
        return EXIT_FINDINGS if self.findings else EXIT_HEALTHY

    @property
    def fixes(self) -> list[Fix]:
        """Every fix in the order to apply them, each once."""
        seen: set[str] = set()
        out: list[Fix] = []
        for f in self.findings:
            for fix in f.fixes:
                key = json.dumps(fix.to_json(), sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    out.append(fix)
        return out

    def describe_cidr(self) -> str:
        return ",".join(map(str, self.cluster_cidr)) if self.cluster_cidr else "unknown"

"""The vocabulary shared by every rule: findings, the cluster as rules see it, rule settings.

A rule is a pure function ``(operation, object, old object, ClusterView, RuleSettings)
-> list[Finding]``. It reads plain dicts (the AdmissionReview's objects as
JSON) and plain data (the cluster-cidr, the node index), and does no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from webhook.core.cidr import IPNetwork
from webhook.core.constants import FLANNEL_CONFIGMAPS

__all__ = [
    "ClusterView",
    "Finding",
    "NetworkMatch",
    "NodeLookup",
    "RuleSettings",
    "Severity",
    "errors",
    "warnings",
]


class Severity(enum.Enum):
    """An ``ERROR`` refuses the object in enforce mode; a ``WARNING`` never does."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a rule found, with what to do about it.

    ``summary`` is short (an AdmissionResponse warning is cut at 256
    characters by the API server); ``detail`` carries the values found and
    expected; ``fix`` the exact command or line that mends it.
    """

    severity: Severity
    code: str
    summary: str
    detail: str = ""
    fix: str = ""

    def text(self) -> str:
        """The whole message: summary, detail and fix."""
        parts = [self.summary]
        if self.detail:
            parts.append(self.detail)
        if self.fix:
            parts.append(f"Fix: {self.fix}")
        return " ".join(parts)


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is Severity.ERROR]


def warnings(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is Severity.WARNING]


class NodeLookup(Protocol):
    """The read side of the node podCIDR index (:class:`webhook.core.nodeindex.NodeCidrIndex`)."""

    def __len__(self) -> int: ...

    def cidrs_of(self, node: str) -> tuple[IPNetwork, ...]: ...

    def overlapping(
        self, query: IPNetwork, *, exclude: str | None = None, limit: int = 5
    ) -> list[tuple[str, IPNetwork]]: ...

    def outside(
        self, networks: list[IPNetwork], *, limit: int = 5
    ) -> tuple[int, list[tuple[str, IPNetwork]]]: ...

    def first_free(self, within: IPNetwork, prefixlen: int) -> IPNetwork | None: ...


@dataclass(frozen=True)
class ClusterView:
    """What the rules know of the cluster at one moment.

    ``cluster_cidr`` is in the order the cluster lists it (the first family is
    primary, as for kube-controller-manager); ``None`` when no source answered.
    ``cidr_source`` names where it came from (e.g. ``--cluster-cidr flag``,
    ``kube-controller-manager --cluster-cidr``). ``notes`` are cluster-wide
    warnings that every admission response carries (e.g. sources that disagree).
    """

    cluster_cidr: tuple[IPNetwork, ...] | None
    cidr_source: str
    nodes: NodeLookup
    mask_v4: int = 24
    mask_v6: int = 64
    notes: tuple[str, ...] = ()
    # True when the cluster-cidr sources disagree (the effective one may be wrong).
    disputed: bool = False
    # Nodes deleted recently, with the podCIDRs they had (a rejoin may get others).
    departed: Mapping[str, tuple[IPNetwork, ...]] = field(default_factory=dict)
    # No source holds a cluster-cidr: a flannel ConfigMap's Network is it; ``defined_by`` is
    # that ConfigMap ("namespace/name"), None before one exists.
    flannel_defines: bool = False
    defined_by: str | None = None

    def cidr_of_family(self, version: int) -> IPNetwork | None:
        for net in self.cluster_cidr or ():
            if net.version == version:
                return net
        return None

    def mask_for(self, version: int) -> int:
        return self.mask_v4 if version == 4 else self.mask_v6

    def describe_cidr(self) -> str:
        if not self.cluster_cidr:
            return "unknown"
        return ",".join(str(n) for n in self.cluster_cidr)


class NetworkMatch(enum.Enum):
    """How flannel's ``Network`` must relate to the cluster-cidr."""

    EXACT = "exact"
    CONTAINS = "contains"


@dataclass(frozen=True)
class RuleSettings:
    """Knobs of the rules, compiled once at start-up."""

    flannel_configmaps: frozenset[tuple[str, str]] = frozenset(FLANNEL_CONFIGMAPS)
    network_match: NetworkMatch = NetworkMatch.EXACT
    # What to do when no source told us the cluster-cidr: refuse or warn.
    unknown_cidr: Severity = Severity.ERROR
    # The flannel ConfigMap may be deleted only when it carries this annotation set to "true".
    allow_delete_annotation: str = "flannel-guard.io/allow-delete"
    # The architecture flannel runs on, for backends that exist only on some (udp: amd64).
    arch: str = "amd64"


"""Pure decisions: from an admission request's objects and a :class:`ClusterView` to a :class:`Verdict`.

Nothing in this package does I/O or imports from the layers above it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from webhook.core.cidr import IPNetwork
from webhook.core.claims import ClaimOutcome, conflict_message
from webhook.core.rules.configmap import is_flannel_configmap, review_configmap
from webhook.core.rules.findings import (
    ClusterView,
    Finding,
    NetworkMatch,
    RuleSettings,
    Severity,
)
from webhook.core.rules.node import review_node

__all__ = [
    "ClusterView",
    "Finding",
    "Mode",
    "NetworkMatch",
    "ReviewInput",
    "RuleSettings",
    "Severity",
    "Verdict",
    "claim_verdict",
    "decide",
    "review",
]

# The API server cuts one warning at 256 characters and drops warnings past 4,096 in total
# (staging/src/k8s.io/apiserver/pkg/warning and admission/plugin/webhook: "truncated").
WARNING_MAX = 256
WARNINGS_TOTAL_MAX = 4096
MESSAGE_MAX = 3000


class Mode(enum.Enum):
    """``enforce`` refuses what is wrong; ``warn`` admits it and says why it would not."""

    ENFORCE = "enforce"
    WARN = "warn"


@dataclass(frozen=True, slots=True)
class ReviewInput:
    """The parts of an AdmissionRequest the rules read."""

    kind: str
    operation: str
    namespace: str | None
    name: str | None
    object: dict[str, Any] | None
    old_object: dict[str, Any] | None
    dry_run: bool = False


@dataclass(frozen=True)
class Verdict:
    """What the webhook answers. ``code`` and ``reason`` are meaningful on denial."""

    allowed: bool
    code: int = 200
    reason: str = ""
    message: str = ""
    warnings: tuple[str, ...] = ()
    patch: list[dict[str, Any]] | None = None
    findings: tuple[Finding, ...] = field(default=(), repr=False)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cap_warnings(texts: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    total = 0
    for text in texts:
        text = _clip(text, WARNING_MAX)
        if total + len(text) > WARNINGS_TOTAL_MAX:
            break
        out.append(text)
        total += len(text)
    return tuple(out)


def decide(findings: list[Finding], mode: Mode, notes: tuple[str, ...] = ()) -> Verdict:
    """Turn findings into a verdict: errors deny in enforce mode; everything else warns."""
    errs = [f for f in findings if f.severity is Severity.ERROR]
    warns = [f"flannel-guard: {f.summary}" for f in findings if f.severity is Severity.WARNING]
    warns.extend(f"flannel-guard: {n}" for n in notes)
    if errs and mode is Mode.ENFORCE:
        # kubectl already prints 'admission webhook "...flannel-guard.io" denied the request: '.
        message = " | ".join(f.text() for f in errs)
        return Verdict(
            allowed=False,
            code=403,
            reason=errs[0].code,
            message=_clip(message, MESSAGE_MAX),
            warnings=_cap_warnings(warns),
            findings=tuple(findings),
        )
    would = [f"flannel-guard (warn mode) would deny: {f.summary}" for f in errs]
    return Verdict(allowed=True, warnings=_cap_warnings(would + warns), findings=tuple(findings))


def review(req: ReviewInput, view: ClusterView, settings: RuleSettings) -> list[Finding]:
    """Every finding about one request; empty for objects flannel-guard does not guard."""
    if req.kind == "ConfigMap":
        subject = req.old_object if req.operation == "DELETE" else req.object
        if not is_flannel_configmap(subject, settings, req.namespace):
            return []
        return review_configmap(req.operation, req.object, req.old_object, view, settings, req.namespace)
    if req.kind == "Node":
        return review_node(req.operation, req.object, req.old_object, view)
    return []


def claim_verdict(verdict: Verdict, outcome: ClaimOutcome, mode: Mode, node: str,
                  suggestion: list[IPNetwork], on_failure: str = "deny") -> Verdict:
    """The verdict of a write once its podCIDR claims are known (``verdict``: the rules' own).

    A CIDR held by another node is refused as any other rule's error (warn mode: a
    warning). A claim that could not be written is denied as a retryable
    503 unless ``on_failure`` is ``admit``: then admitted with a warning.
    """
    if outcome.ok:
        return verdict
    if outcome.status == "capped":
        # Issue 28: judged (rules and claims known in memory) but not claimed; the write is the
        # API server's to store, and a later claim of the same CIDR by another node is refused
        # only once this Node is stored and indexed.
        return Verdict(allowed=verdict.allowed, code=verdict.code, reason=verdict.reason,
                       message=verdict.message, patch=verdict.patch, findings=verdict.findings,
                       warnings=_cap_warnings([
                           f"flannel-guard: podCIDR(s) of node {node[:60]} judged without claiming"
                           f" ({outcome.error[:120]})", *verdict.warnings]))
    if outcome.status == "conflict":
        message = conflict_message(node, outcome.conflicts, suggestion)
        if mode is Mode.ENFORCE:
            return Verdict(allowed=False, code=403, reason="PodCIDRClaimed",
                           message=_clip(message, MESSAGE_MAX), warnings=verdict.warnings,
                           findings=verdict.findings)
        return Verdict(allowed=True, warnings=_cap_warnings(
            [f"flannel-guard (warn mode) would deny: {message}", *verdict.warnings]),
            findings=verdict.findings)
    text = (f"flannel-guard could not claim the podCIDR(s) of node {node[:253]} ({outcome.error[:160]})")
    if on_failure == "admit":
        return Verdict(allowed=True, warnings=_cap_warnings(
            [f"{text}: admitted unclaimed; another replica may admit the same CIDR", *verdict.warnings]),
            findings=verdict.findings)
    return Verdict(allowed=False, code=503, reason="ClaimUnavailable",
                   message=f"{text}; nothing was stored, retry the write.", warnings=verdict.warnings,
                   findings=verdict.findings)

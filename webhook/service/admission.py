"""AdmissionReview ``admission.k8s.io/v1``: read a request, finish a response.

Two error families, as in kopf and controller-runtime: a bad *review request*
(not JSON, not an AdmissionReview) is the caller's fault and gets an HTTP 4xx
with a JSON body (:class:`BadReview`); a bad *reviewed object* is a denial
inside a well-formed AdmissionReview response (a :class:`~webhook.core.rules.Verdict`).

Contract (k8s.io/api/admission/v1/types.go and the API server's
``admission/plugin/webhook``): the response echoes ``apiVersion`` and ``kind``
and carries ``response.uid`` equal to ``request.uid``; a denial carries
``status.code`` and ``status.message``; a patch is base64 JSONPatch with
``patchType: JSONPatch``.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, ValidationError

from webhook.core.rules import ReviewInput, Verdict

__all__ = [
    "API_VERSION",
    "AdmissionRequest",
    "BadReview",
    "finish",
    "parse_review",
]

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"


class BadReview(ValueError):
    """Raised when a request body is not an AdmissionReview v1; answered with HTTP ``status``."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _GVK(BaseModel):
    model_config = ConfigDict(extra="allow")
    group: StrictStr = ""
    version: StrictStr = ""
    kind: StrictStr


class AdmissionRequest(BaseModel):
    """The fields of ``request`` that flannel-guard reads; the rest is tolerated."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    uid: StrictStr
    kind: _GVK
    operation: Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
    name: StrictStr | None = None
    namespace: StrictStr | None = None
    object: dict[str, Any] | None = None
    oldObject: dict[str, Any] | None = None
    dryRun: StrictBool = False
    subResource: StrictStr | None = None

    def to_input(self) -> ReviewInput:
        return ReviewInput(
            kind=self.kind.kind,
            operation=self.operation,
            namespace=self.namespace,
            name=self.name,
            object=self.object,
            old_object=self.oldObject,
            dry_run=self.dryRun,
        )


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        where = ".".join(str(x) for x in e.get("loc", ())) or "request"
        parts.append(f"request.{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def _shown(value: object) -> str:
    """A value for a message: a string cut short, else only its JSON type (never str() of a tree)."""
    if isinstance(value, str):
        return repr(value[:60])
    if value is None:
        return "null"
    return "a JSON " + {dict: "object", list: "array", bool: "boolean"}.get(type(value), "number")


def _lone_surrogate(doc: object) -> bool:
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return True
    return False


def parse_review(body: bytes) -> AdmissionRequest:
    """Parse a request body into the typed request, or raise :class:`BadReview`."""
    if not body:
        raise BadReview("empty body: send an AdmissionReview admission.k8s.io/v1 as JSON")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadReview("body is not UTF-8 JSON") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadReview(f"body is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise BadReview("body is nested too deeply") from None
    except ValueError as e:  # an integer literal past Python's 4,300-digit conversion limit
        raise BadReview(f"body is not an AdmissionReview: {str(e)[:80]}") from None
    if ("\\ud" in text or "\\uD" in text) and _lone_surrogate(doc):
        # "\ud800" parses, but is no character: nothing holding it can be answered in UTF-8.
        raise BadReview("body has a lone UTF-16 surrogate escape (not Unicode text)")
    if not isinstance(doc, dict):
        raise BadReview("body must be a JSON object (an AdmissionReview)")
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if kind != KIND or api_version != API_VERSION:
        raise BadReview(
            f"expected apiVersion {API_VERSION} kind {KIND}, got {_shown(api_version)}"
            f" {_shown(kind)}; set admissionReviewVersions: [\"v1\"] in the webhook"
            " configuration"
        )
    raw = doc.get("request")
    if not isinstance(raw, dict) or not raw:
        raise BadReview("AdmissionReview has no request object")
    try:
        request = AdmissionRequest.model_validate(raw)
    except ValidationError as e:
        raise BadReview(f"invalid AdmissionReview: {_describe(e)}") from None
    return request


def finish(uid: str, verdict: Verdict) -> dict[str, Any]:
    """The one function that builds every response, so that none can forget the uid or kind."""
    response: dict[str, Any] = {"uid": uid, "allowed": verdict.allowed}
    if not verdict.allowed:
        response["status"] = {
            "code": verdict.code,
            "message": verdict.message,
            "reason": verdict.reason,
        }
    if verdict.warnings:
        response["warnings"] = list(verdict.warnings)
    if verdict.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(
            json.dumps(verdict.patch, separators=(",", ":")).encode()
        ).decode()
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}

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
from dataclasses import dataclass
from typing import Any, Final

import orjson

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
OPERATIONS: Final = ("CREATE", "UPDATE", "DELETE", "CONNECT")


class BadReview(ValueError):
    """Raised when a request body is not an AdmissionReview v1; answered with HTTP ``status``."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """The fields of ``request`` that flannel-guard reads (admission/v1 ``AdmissionRequest``).

    A plain record checked by :func:`parse_review` field by field: a typed model library
    cost more per review than every rule together (bench/RESULTS.md, issue 16), and eight
    fields need no schema engine.
    """

    uid: str
    kind: str
    operation: str
    name: str | None = None
    namespace: str | None = None
    object: dict[str, Any] | None = None
    oldObject: dict[str, Any] | None = None  # the API's field names
    dryRun: bool = False
    subResource: str | None = None

    def to_input(self) -> ReviewInput:
        return ReviewInput(
            kind=self.kind,
            operation=self.operation,
            namespace=self.namespace,
            name=self.name,
            object=self.object,
            old_object=self.oldObject,
            dry_run=self.dryRun,
        )


def _shown(value: object) -> str:
    """A value for a message: a string cut short, else only its JSON type (never str() of a tree)."""
    if isinstance(value, str):
        return repr(value[:60])
    if value is None:
        return "null"
    return "a JSON " + {dict: "object", list: "array", bool: "boolean"}.get(type(value), "number")


def _field(raw: dict[str, Any], key: str, want: type | tuple[type, ...], what: str, *,
           required: bool = False) -> Any:
    value = raw.get(key)
    if value is None:
        if required:
            raise BadReview(f"invalid AdmissionReview: request.{key}: field required ({what})")
        return None
    if not isinstance(value, want):
        raise BadReview(f"invalid AdmissionReview: request.{key}: must be {what}, got {_shown(value)}")
    return value


def _request(raw: dict[str, Any]) -> AdmissionRequest:
    """The typed request out of ``request``, or :class:`BadReview` naming the first bad field."""
    uid = _field(raw, "uid", str, "a string", required=True)
    gvk = _field(raw, "kind", dict, "an object (group, version, kind)", required=True)
    kind = gvk.get("kind")
    if not isinstance(kind, str):
        raise BadReview(f"invalid AdmissionReview: request.kind.kind: must be a string, got {_shown(kind)}")
    operation = raw.get("operation")
    if operation not in OPERATIONS:
        raise BadReview("invalid AdmissionReview: request.operation: must be one of"
                        f" {', '.join(OPERATIONS)}, got {_shown(operation)}")
    dry_run = raw.get("dryRun", False)
    if dry_run is None:
        dry_run = False
    if not isinstance(dry_run, bool):
        raise BadReview(f"invalid AdmissionReview: request.dryRun: must be a boolean, got {_shown(dry_run)}")
    return AdmissionRequest(
        uid=uid, kind=kind, operation=operation,
        name=_field(raw, "name", str, "a string"),
        namespace=_field(raw, "namespace", str, "a string"),
        object=_field(raw, "object", dict, "an object"),
        oldObject=_field(raw, "oldObject", dict, "an object"),
        dryRun=dry_run,
        subResource=_field(raw, "subResource", str, "a string"),
    )


def parse_review(body: bytes) -> AdmissionRequest:
    """Parse a request body into the typed request, or raise :class:`BadReview`.

    orjson reads the bytes as RFC 8259 JSON: invalid UTF-8, a lone UTF-16 surrogate
    escape (which no UTF-8 answer could carry), NaN/Infinity, nesting past 1,024 levels
    and trailing garbage are all refused, each in one bounded pass.
    """
    if not body:
        raise BadReview("empty body: send an AdmissionReview admission.k8s.io/v1 as JSON")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if "recursion" in e.msg:
            raise BadReview("body is nested too deeply") from None
        if "surrogate" in e.msg and "UTF-8" not in e.msg:
            raise BadReview("body has a lone UTF-16 surrogate escape (not Unicode text)") from None
        if "UTF-8" in e.msg:
            raise BadReview("body is not UTF-8 JSON") from None
        raise BadReview(f"body is not JSON: {e.msg[:80]} at line {e.lineno} column {e.colno}") from None
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
    return _request(raw)


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
        response["patch"] = base64.b64encode(orjson.dumps(verdict.patch)).decode()
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def encode(document: dict[str, Any]) -> bytes:
    """A response document as JSON bytes (UTF-8, compact)."""
    return orjson.dumps(document)

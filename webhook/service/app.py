"""The HTTP shell: size, content type and JSON first, then a pure review, then one finishing function.

Shaped after controller-runtime's ``pkg/webhook/admission/http.go``: every HTTP
concern is settled before the handler runs, and a bug inside a rule still
answers with the request's uid and a verdict chosen by the webhook's failure
stance (a bug must never block node registration).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Send

from webhook.control.allocator import Allocator, ClaimWithheld, RangeExhaustedError, StoreUnavailable
from webhook.control.claimer import Claimer
from webhook.control.settings import Settings
from webhook.control.state import ClusterState
from webhook.core.claims import suggest_free
from webhook.core.constants import (
    ROUTE_HEALTHZ,
    ROUTE_METRICS,
    ROUTE_MUTATE,
    ROUTE_READYZ,
    ROUTE_VALIDATE,
)
from webhook.core.rules import ReviewInput, Severity, Verdict, claim_verdict, decide, review
from webhook.core.rules.configmap import is_flannel_configmap
from webhook.core.rules.fixnetwork import fix_network
from webhook.core.rules.node import claimed_cidrs, node_name, pod_cidrs
from webhook.kube.cluster import staleness_note
from webhook.kube.events import EventRecorder
from webhook.service.admission import AdmissionRequest, BadReview, encode, finish, parse_review
from webhook.service.asgi import BODY_RECEIVED, BodyBudget, Head, Refused, read_body, send_json
from webhook.service.metrics import Metrics

__all__ = ["AdmissionFastPath", "create_app"]

log = structlog.get_logger("flannel_guard")

Reviewer = Callable[[ReviewInput], Awaitable[Verdict]]


def _bad(status: int, message: str, metrics: Metrics,
         headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str] | None]:
    metrics.bad_requests.labels(str(status)).inc()
    return status, orjson.dumps({"error": message}), headers


def _kind_label(kind: str) -> str:
    """The kind as a metric label: a closed set, whatever a caller writes into the review."""
    return kind if kind in ("Node", "ConfigMap") else "other"


def create_app(settings: Settings, state: ClusterState, metrics: Metrics | None = None,
               allocator: Allocator | None = None, claimer: Claimer | None = None) -> FastAPI:
    """Build the ASGI app serving /validate, /mutate, /healthz, /readyz and /metrics.

    ``allocator`` (mutating mode) gives Nodes without a podCIDR a free, claimed one;
    ``claimer`` claims the podCIDRs of every validated write that sets them.
    """
    metrics = metrics or Metrics()
    budget = BodyBudget()
    # No redirects (a 307 to /validate would go to whatever Host the caller named).
    app = FastAPI(title="flannel-guard", docs_url=None, redoc_url=None, openapi_url=None,
                  redirect_slashes=False)
    app.state.metrics = metrics
    app.state.cluster = state
    # Set later by the server when the cluster-cidr becomes known (mutating mode).
    app.state.allocator = allocator
    app.state.claimer = claimer
    app.state.events = None  # an EventRecorder once there is an API to write Events to

    def notes(view_notes: tuple[str, ...]) -> tuple[str, ...]:
        if not state.ready:
            return (*view_notes, "node index not loaded yet: overlaps with existing nodes not checked")
        extra = [n for n in (staleness_note(state, time.monotonic()), state.outside_note()) if n]
        return (*view_notes, *extra) if extra else view_notes

    async def validate(req: ReviewInput) -> Verdict:
        view = state.view()
        findings = review(req, view, settings.rules)
        verdict = decide(findings, settings.mode, notes(view.notes))
        if req.kind != "Node" or not verdict.allowed:
            return verdict
        if req.operation == "DELETE":
            if settings.standalone and not req.dry_run:
                state.forget_node(req.name or "")  # its claims are released by the claimer
            return verdict
        claimer: Claimer | None = app.state.claimer
        wanted = claimed_cidrs(req.operation, req.object, req.old_object)
        if claimer is None or not wanted or any(f.severity is Severity.ERROR for f in findings):
            return verdict
        name = node_name(req.object)
        outcome = await claimer.claim(name, wanted, dry_run=req.dry_run)
        metrics.claims.labels(outcome.status).inc()
        suggestion = (suggest_free(view.cluster_cidr, view.mask_for, state.index, claimer.book.index)
                      if outcome.status == "conflict" else [])
        verdict = claim_verdict(verdict, outcome, settings.mode, name, suggestion, settings.on_claim_failure)
        if outcome.status == "conflict" and app.state.events is not None and not req.dry_run:
            app.state.events.warning(name, "PodCIDRClaimRefused", verdict.message or verdict.warnings[0])
        if settings.standalone and verdict.allowed and outcome.ok and not req.dry_run:
            # Standalone: the index holds what this process admitted and claimed, nothing else.
            state.index.set(name, wanted)
        return verdict

    async def mutate(req: ReviewInput) -> Verdict:
        if req.kind == "Node" and app.state.allocator is not None:
            if not (state.ready and state.claims_ready):
                # Without the node index and the claims a free CIDR cannot be told from a used one.
                return Verdict(allowed=True, warnings=(
                    "flannel-guard: not ready (node index not loaded); no podCIDR assigned",))
            return await mutate_node(req, app.state.allocator, settings, app.state.events,
                                     metrics.mutate_claim)
        if (req.kind == "ConfigMap" and settings.fix_network and req.operation in ("CREATE", "UPDATE")
                and is_flannel_configmap(req.object, settings.rules, req.namespace)):
            fix = fix_network(req.object, state.view())
            if fix is not None:
                return Verdict(allowed=True, patch=fix.patch, warnings=fix.warnings)
        return Verdict(allowed=True)

    async def handle(scope: dict[str, Any], receive: Receive, webhook: str,
                     reviewer: Reviewer) -> tuple[int, bytes, dict[str, str] | None]:
        """One admission: (status, JSON body, extra headers); the callers send it."""
        started = time.perf_counter()
        head = Head(scope)
        ctype = head.content_type or ""
        if ctype.split(";")[0].strip().lower() != "application/json":
            return _bad(415, f"Content-Type must be application/json, got {ctype[:60]!r}", metrics)
        try:
            body = await read_body(head, receive, settings.max_body_bytes, budget,
                                   received=BODY_RECEIVED in scope)
            adm = parse_review(body)
        except Refused as e:
            return _bad(e.status, str(e), metrics, e.headers)
        except BadReview as e:
            return _bad(e.status, str(e), metrics)
        except ClientDisconnect:
            # Nobody is left to answer: one line, no traceback (1,500 tracebacks stalled 2.35 s).
            log.debug("client disconnected before its body was read", webhook=webhook)
            return 400, b"", None
        verdict = await _run(webhook, reviewer, adm, metrics)
        elapsed = time.perf_counter() - started
        kind = _kind_label(adm.kind)
        outcome = "allowed" if verdict.allowed else "denied"
        if verdict.allowed and verdict.warnings:
            outcome = "warned"
        metrics.answered(webhook, kind, adm.operation, outcome, elapsed)
        log.info(
            "admission",
            webhook=webhook,
            uid=adm.uid[:64],
            kind=adm.kind[:64],
            namespace=(adm.namespace or "")[:64],
            name=(adm.name or "")[:128],
            operation=adm.operation,
            dry_run=adm.dryRun,
            verdict=outcome,
            reason=verdict.reason,
            warnings=len(verdict.warnings),
            latency_ms=round(elapsed * 1000, 3),
            **_patched(verdict),
        )
        return 200, encode(finish(adm.uid, verdict)), None

    async def validate_asgi(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await send_json(send, *await handle(scope, receive, "validate", validate))

    async def mutate_asgi(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await send_json(send, *await handle(scope, receive, "mutate", mutate))

    def as_response(answer: tuple[int, bytes, dict[str, str] | None]) -> Response:
        status, body, headers = answer
        return Response(body, status_code=status, headers=headers, media_type="application/json")

    async def validate_route(request: Request) -> Response:
        return as_response(await handle(request.scope, request.receive, "validate", validate))

    async def mutate_route(request: Request) -> Response:
        return as_response(await handle(request.scope, request.receive, "mutate", mutate))

    app.post(ROUTE_VALIDATE)(validate_route)
    app.post(ROUTE_MUTATE)(mutate_route)
    # The same two handlers as bare ASGI apps, for AdmissionFastPath (what the server runs).
    app.state.admission_routes = {ROUTE_VALIDATE: validate_asgi, ROUTE_MUTATE: mutate_asgi}
    add_probe_routes(app, state, metrics)
    return app


class AdmissionFastPath:
    """The ASGI app the server runs: ``POST /validate`` and ``/mutate`` straight to their handlers.

    Everything else (the probes, /metrics, 404s, 405s) goes to the FastAPI app. A pure
    ASGI layer, as Starlette advises for per-request work that must be cheap: FastAPI's
    middleware stack, routing and dependency solving cost more per review than the rules
    themselves (bench/RESULTS.md, issue 16). The handlers are the very ones FastAPI's
    routes call, so the two paths cannot answer differently.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.state = app.state
        self._routes: dict[str, ASGIApp] = app.state.admission_routes

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self._routes.get(scope["path"])
            if route is not None:
                await route(scope, receive, send)
                return
        await self.app(scope, receive, send)


def add_probe_routes(app: FastAPI, state: ClusterState, metrics: Metrics) -> None:
    """/healthz, /readyz and /metrics: on the webhook port, and alone on the probes port."""

    @app.exception_handler(StarletteHTTPException)
    async def json_error(request: Request, exc: StarletteHTTPException) -> Response:
        # As every other refusal: {"error": ...}, not FastAPI's {"detail": ...} (a GET of /validate: 405).
        return Response(orjson.dumps({"error": str(exc.detail)}), status_code=exc.status_code,
                        headers=exc.headers, media_type="application/json")

    @app.get(ROUTE_HEALTHZ)
    async def healthz() -> Response:
        return PlainTextResponse("ok")

    @app.get(ROUTE_READYZ)
    async def readyz() -> Response:
        if state.stopping:
            return PlainTextResponse("not ready: shutting down", status_code=503)
        if state.ready and state.claims_ready:
            return PlainTextResponse("ok")
        return PlainTextResponse("not ready: cluster state not loaded yet", status_code=503)

    @app.get(ROUTE_METRICS)
    async def metrics_route() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _patched(verdict: Verdict) -> dict[str, Any]:
    """For the admission log line: the podCIDRs a mutation gave (``pod_cidrs``), if it gave any."""
    for op in verdict.patch or ():
        value = op.get("value")
        if op.get("path") == "/spec/podCIDRs" and isinstance(value, list):
            return {"pod_cidrs": [str(v)[:50] for v in value[:2]]}
        if op.get("path") == "/spec" and isinstance(value, dict) and isinstance(value.get("podCIDRs"), list):
            return {"pod_cidrs": [str(v)[:50] for v in value["podCIDRs"][:2]]}
    return {}


async def mutate_node(req: ReviewInput, allocator: Allocator, settings: Settings,
                      events: EventRecorder | None = None,
                      report: Callable[[str], None] | None = None) -> Verdict:
    """Give a Node without podCIDRs one per cluster-cidr family, reserved first, as a JSONPatch;
    ``report`` counts each claim's outcome."""
    if req.operation not in ("CREATE", "UPDATE") or pod_cidrs(req.object):
        return Verdict(allowed=True)
    name = node_name(req.object)
    if not name or len(name) > 253:
        # No name, or one the API server refuses (a DNS subdomain is at most 253 characters):
        # reserve nothing for it, and never echo it.
        return Verdict(allowed=True)
    try:
        cidrs = await allocator.assign(name, dry_run=req.dry_run, report=report)
    except RangeExhaustedError as e:
        # As kube-controller-manager's range allocator: the Node registers without a podCIDR
        # (it records CIDRNotAvailable); a denial would keep the node out of the cluster.
        if events is not None and not req.dry_run:
            events.warning(name, "CIDRNotAvailable", f"Node {name} status is now: CIDRNotAvailable ({e})")
        return Verdict(allowed=True, warnings=(
            f"flannel-guard: no free podCIDR for node {name[:60]}: {e}"[:256],))
    except ClaimWithheld as e:
        # Issue 28: past the cap on claims for unstored nodes, or a forged name's claim past the
        # orphan age. The Node registers without one; the assigning loop gives it one once stored.
        return Verdict(allowed=True, warnings=(
            f"flannel-guard: no podCIDR assigned to node {name[:60]} at registration ({str(e)[:120]});"
            " it is assigned once the Node is stored"[:256],))
    except StoreUnavailable as e:
        text = (f"flannel-guard could not reserve a podCIDR for node {name} ({str(e)[:120]});"
                " the node has none until one is assigned")
        if settings.on_reservation_failure == "deny":
            return Verdict(allowed=False, code=503, reason="ReservationFailed", message=text)
        return Verdict(allowed=True, warnings=(text[:256],))
    values = [str(c) for c in cidrs]
    if events is not None and not req.dry_run:
        events.normal(name, "PodCIDRAssigned", f"flannel-guard assigned podCIDR {','.join(values)}"
                      f" to node {name} (at registration)")
    if isinstance((req.object or {}).get("spec"), dict):
        patch = [{"op": "add", "path": "/spec/podCIDR", "value": values[0]},
                 {"op": "add", "path": "/spec/podCIDRs", "value": values}]
    else:
        patch = [{"op": "add", "path": "/spec", "value": {"podCIDR": values[0], "podCIDRs": values}}]
    return Verdict(allowed=True, patch=patch)


async def _run(webhook: str, reviewer: Reviewer, adm: AdmissionRequest, metrics: Metrics) -> Verdict:
    """Run a reviewer; a bug inside it answers by failure stance instead of a 500."""
    try:
        return await reviewer(adm.to_input())
    except Exception:
        metrics.internal_errors.labels(webhook).inc()
        log.exception("review failed", webhook=webhook, uid=adm.uid[:64], kind=adm.kind[:64])
        # Nodes: never block registration on our bug. The flannel ConfigMap: refuse, since
        # its webhook is failurePolicy Fail anyway and the operator can retry.
        allowed = adm.kind != "ConfigMap"
        return Verdict(
            allowed=allowed,
            code=500,
            reason="InternalError",
            message="flannel-guard failed to review this request (see its logs); retry, or"
            " check the webhook's health.",
            warnings=("flannel-guard: internal error; admitted without review",) if allowed else (),
        )


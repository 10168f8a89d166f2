"""The floor: flannel-guard's own uvicorn/TLS server answering a fixed AdmissionReview from a bare endpoint.

``python bench/floor_app.py --port P --tls-cert C --tls-key K`` serves
``POST /validate`` (and ``GET /readyz``) with exactly the server
:func:`webhook.service.server.build_server` builds (same uvicorn settings, same TLS
context, same FastAPI routing); only the app is this module's. The endpoint
reads the body, as the real one must, and answers pre-built bytes: what is left
is the cost of HTTP, TLS and the framework, which no webhook can go below.
Bench-only: never imported by ``webhook``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

import webhook.service.server
from webhook.control.settings import Settings
from webhook.control.state import ClusterState
from webhook.service.asgi import send_json
from webhook.service.metrics import Metrics

RESPONSE = json.dumps({
    "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
    "response": {"uid": "00000000-0000-0000-0000-000000000000", "allowed": True},
}).encode()


def floor_app(*_: Any, **__: Any) -> FastAPI:
    """The floor: the server's fast path to a bare ASGI handler that reads the body and answers fixed bytes.

    With ``FLOOR_FRAMEWORK=fastapi`` the request goes through a FastAPI route instead (the
    floor of issue 6's figures, kept as a reference row).
    """
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics = Metrics()  # build_server registers its connection metrics here

    @app.post("/validate")
    async def validate_route(request: Request) -> Response:
        await request.body()
        return Response(RESPONSE, media_type="application/json")

    async def validate(scope: dict[str, Any], receive: Any, send: Any) -> None:
        # As the real handlers: the body from ASGI receive, the answer by the same send_json.
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send_json(send, 200, RESPONSE)

    @app.get("/readyz")
    async def readyz() -> Response:
        return PlainTextResponse("ok")

    fastapi_only = os.environ.get("FLOOR_FRAMEWORK") == "fastapi"
    app.state.admission_routes = {} if fastapi_only else {"/validate": validate}
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls-cert", type=Path, required=True)
    p.add_argument("--tls-key", type=Path, required=True)
    args = p.parse_args()
    # build_server is the serving stack under test; only the app it wraps is swapped.
    webhook.service.server.create_app = floor_app  # type: ignore[assignment]
    settings = Settings(port=args.port, tls_cert=args.tls_cert, tls_key=args.tls_key)
    state = ClusterState(cluster_cidr=None, cidr_source="none")
    server, _ = webhook.service.server.build_server(settings, state)
    asyncio.run(server.serve())


if __name__ == "__main__":
    main()

"""Probes and metrics on a plain-HTTP listener of their own (``--probe-port``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from webhook.control.settings import Settings
from webhook.control.state import ClusterState
from webhook.service.app import add_probe_routes
from webhook.service.metrics import Metrics

__all__ = ["ProbeServer", "build_probe_server", "probe_app"]


def probe_app(state: ClusterState, metrics: Metrics) -> FastAPI:
    """``--probe-port``'s plain-HTTP app: /healthz, /readyz and /metrics, nothing else.

    Apart from the webhook port (as controller-runtime's ``HealthProbeBindAddress`` and
    ``metrics.BindAddress``) so that ``--client-ca`` on that port, which refuses callers
    without a client certificate during the handshake, never refuses the kubelet's
    probes (they present none) or a Prometheus scrape. Plain HTTP: the kubelet's
    probes need no certificate, and a scrape through the pod IP (hostNetwork: the
    node's address) matches no SAN of the serving certificate. Nothing here takes
    input or tells a secret: counts, durations and pool sizes.
    """
    app = FastAPI(title="flannel-guard probes", docs_url=None, redoc_url=None, openapi_url=None)
    add_probe_routes(app, state, metrics)
    return app


class ProbeServer(uvicorn.Server):
    """A second uvicorn server in the same event loop; the webhook server owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn before capture_signals
        pass


def build_probe_server(settings: Settings, state: ClusterState, metrics: Metrics) -> ProbeServer:
    """The plain-HTTP probes and metrics listener on ``settings.probe_port``."""
    config = uvicorn.Config(
        probe_app(state, metrics), host=settings.host, port=settings.probe_port,
        log_config=None, access_log=False, server_header=False, lifespan="off",
        timeout_keep_alive=30, timeout_graceful_shutdown=5,
        # Probes and scrapes are a few small GETs: bound what one listener accepts.
        limit_concurrency=64,
    )
    return ProbeServer(config)

"""The server owns TLS, certificate reload, readiness and graceful shutdown (as controller-runtime's).

uvicorn builds its own ``SSLContext`` from file names; flannel-guard hands it one
of its own instead (TLS 1.2 minimum, strong suites only, optional client
authentication) so that :class:`~webhook.certs.CertReloader` can load a
rotated pair into the very context the listener uses.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import FrameType

import structlog
import uvicorn

from webhook.allocator import Allocator, MemoryStore
from webhook.app import create_app
from webhook.certs import CertReloader, server_ssl_context
from webhook.settings import Settings
from webhook.state import ClusterState

__all__ = ["build_server", "serve"]

log = structlog.get_logger("flannel_guard")


class _Server(uvicorn.Server):
    """uvicorn's server, with readiness turned false the moment a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, state: ClusterState) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._state.ready = False
        super().handle_exit(sig, frame)


def build_server(settings: Settings, state: ClusterState,
                 allocator: Allocator | None = None) -> tuple[uvicorn.Server, CertReloader]:
    """A uvicorn server over HTTPS with flannel-guard's own TLS context."""
    assert settings.tls_cert and settings.tls_key
    app = create_app(settings, state, allocator=allocator)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.tls_cert),
        ssl_keyfile=str(settings.tls_key),
        log_config=None,
        access_log=False,
        server_header=False,
        # kube-apiserver keeps connections to webhooks alive; match its idle timeout order.
        timeout_keep_alive=30,
        timeout_graceful_shutdown=20,
        lifespan="off",
    )
    config.load()
    context = server_ssl_context(settings.tls_cert, settings.tls_key, settings.client_ca)
    config.ssl = context
    return _Server(config, state), CertReloader(context, settings.tls_cert, settings.tls_key)


async def serve(settings: Settings, *, cidr_source: str) -> None:
    """Serve until SIGTERM/SIGINT; readiness goes false as shutdown begins."""
    state = ClusterState(cluster_cidr=settings.cluster_cidr, cidr_source=cidr_source,
                         mask_v4=settings.mask_v4, mask_v6=settings.mask_v6)
    if settings.standalone:
        state.mark_synced()
    allocator = None
    tasks = []
    if settings.allocate and settings.cluster_cidr:
        allocator = Allocator(settings.cluster_cidr, index=state.index, store=MemoryStore(),
                              mask_v4=settings.mask_v4, mask_v6=settings.mask_v6,
                              grace=settings.reservation_grace)
        tasks.append(asyncio.create_task(allocator.run_reclaimer(min(60.0, settings.reservation_grace))))
    server, reloader = build_server(settings, state, allocator)
    tasks.append(asyncio.create_task(reloader.run()))
    log.info("serving", host=settings.host, port=settings.port, mode=settings.mode.value,
             standalone=settings.standalone, cluster_cidr=state.view().describe_cidr(),
             cidr_source=cidr_source)
    try:
        await server.serve()
    finally:
        state.ready = False
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info("stopped")

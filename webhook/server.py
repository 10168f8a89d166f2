"""The server owns TLS, certificate reload, readiness and graceful shutdown (as controller-runtime's).

uvicorn builds its own ``SSLContext`` from file names; flannel-guard makes one
of its own instead (TLS 1.2 minimum, strong suites only, optional client
authentication) so that :class:`~webhook.certs.CertReloader` can load a
rotated pair into the very context the listener uses. uvicorn's listener is
plain TCP: TLS is done per connection by :class:`~webhook.connections.ConnectionGuard`
(uvicorn's protocol factory), which caps connections and puts deadlines on the
handshake, the headers and the body (the numbers and why: :mod:`webhook.limits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Callable, Iterator
from types import FrameType

import structlog
import uvicorn
from kubernetes.client import ApiClient

from webhook import limits
from webhook.allocator import Allocator, MemoryStore, ReservationStore
from webhook.app import create_app
from webhook.certs import CertReloader, server_ssl_context
from webhook.cluster import NodeWatcher, api_client, apply_resolution, discover
from webhook.connections import ConnectionGuard
from webhook.leases import LeaseStore
from webhook.settings import Settings
from webhook.state import ClusterState

__all__ = ["build_server", "serve"]

log = structlog.get_logger("flannel_guard")


class _Server(uvicorn.Server):
    """uvicorn's server, with readiness turned false the moment a stop signal arrives.

    With a ``shutdown_delay``, SIGTERM first only turns readiness false and the
    server keeps accepting for that long (while the endpoint removal reaches
    the API server's resolver, requests still routed here are answered), then
    stops accepting and lets in-flight requests finish. A second signal, or
    SIGINT, stops at once.
    """

    def __init__(self, config: uvicorn.Config, state: ClusterState, shutdown_delay: float = 0.0,
                 guard: ConnectionGuard | None = None) -> None:
        super().__init__(config)
        self._state = state
        self._shutdown_delay = shutdown_delay
        self._exit_at: float | None = None
        self._guard = guard

    def _log_started_message(self, listeners: object) -> None:
        """uvicorn's listener is plain TCP (TLS is per connection): ``serve`` logs the start itself."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._guard is not None:
            self._guard.stop()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._state.ready = False
        if sig == signal.SIGTERM and self._shutdown_delay > 0 and self._exit_at is None:
            self._captured_signals.append(sig)  # as uvicorn does: re-raised once served
            self._exit_at = time.monotonic() + self._shutdown_delay
            return
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn re-raises the stop signal once it has served; we return instead, so that
        :func:`serve` runs its cleanup (watch stopped, tasks cancelled) and exits with 0."""
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)


def build_server(settings: Settings, state: ClusterState,
                 allocator: Allocator | None = None) -> tuple[_Server, CertReloader]:
    """A uvicorn server over HTTPS with flannel-guard's own TLS context."""
    assert settings.tls_cert and settings.tls_key
    app = create_app(settings, state, allocator=allocator)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
        http="h11",
        ws="none",  # no WebSocket upgrade: nothing here speaks it
        # kube-apiserver keeps connections to webhooks alive; match its idle timeout order.
        timeout_keep_alive=limits.KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=20,
        h11_max_incomplete_event_size=limits.MAX_HEADER_BYTES,
        lifespan="off",
    )
    config.load()
    context = server_ssl_context(settings.tls_cert, settings.tls_key, settings.client_ca)
    guard = ConnectionGuard(context, registry=app.state.metrics.registry)
    # uvicorn calls its http_protocol_class once per accepted connection.
    config.http_protocol_class = guard  # type: ignore[assignment]
    reloader = CertReloader(context, settings.tls_cert, settings.tls_key)
    return _Server(config, state, settings.shutdown_delay, guard), reloader


REDISCOVER_INTERVAL = 300.0


async def serve(settings: Settings, *, cidr_source: str) -> None:
    """Serve until SIGTERM/SIGINT; readiness goes false as shutdown begins.

    Standalone: the cluster-cidr is the flag's, the index holds what this process
    admitted, reservations live in memory. With an API: the cluster-cidr is
    discovered (and rediscovered every 5 minutes), the index follows a watch of
    Nodes, reservations are Leases in ``settings.namespace``.
    """
    state = ClusterState(cluster_cidr=settings.cluster_cidr, cidr_source=cidr_source,
                         mask_v4=settings.mask_v4 or 24, mask_v6=settings.mask_v6 or 64)
    tasks: list[asyncio.Task[None]] = []
    api = None
    watcher = None
    store: ReservationStore
    if settings.standalone:
        state.mark_synced()
        store = MemoryStore()
    else:
        api = api_client(settings.kubeconfig, settings.in_cluster)
        await _discover(api, settings, state)
        watcher = NodeWatcher(api, state)
        tasks.append(asyncio.create_task(watcher.run()))
        store = LeaseStore(api, settings.namespace, duration=int(settings.reservation_grace))
    server, reloader = build_server(settings, state)
    app = server.config.app

    def ensure_allocator() -> None:
        """Mutating mode needs a known cluster-cidr; start allocating once there is one."""
        if settings.allocate and state.cluster_cidr and app.state.allocator is None:
            allocator = Allocator(state.cluster_cidr, index=state.index, store=store,
                                  mask_v4=state.mask_v4, mask_v6=state.mask_v6,
                                  grace=settings.reservation_grace)
            app.state.allocator = allocator
            tasks.append(asyncio.create_task(
                allocator.run_reclaimer(min(60.0, settings.reservation_grace))))

    ensure_allocator()
    tasks.append(asyncio.create_task(reloader.run(settings.cert_reload_interval)))
    if api is not None:
        tasks.append(asyncio.create_task(_rediscover(api, settings, state, ensure_allocator)))
    log.info("serving", host=settings.host, port=settings.port, mode=settings.mode.value,
             standalone=settings.standalone, cluster_cidr=state.view().describe_cidr(),
             cidr_source=state.cidr_source, allocate=app.state.allocator is not None)
    try:
        await server.serve()
    finally:
        state.ready = False
        if watcher is not None:
            watcher.stop()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if api is not None:
            api.close()
        log.info("stopped")


async def _discover(api: ApiClient, settings: Settings, state: ClusterState) -> None:
    resolution = await discover(api, settings.cluster_cidr)
    apply_resolution(state, resolution)
    # Mask flags given to flannel-guard win over what kube-controller-manager says.
    if settings.mask_v4:
        state.mask_v4 = settings.mask_v4
    if settings.mask_v6:
        state.mask_v6 = settings.mask_v6
    log.info("cluster-cidr discovered", cluster_cidr=state.view().describe_cidr(),
             source=state.cidr_source, agree=resolution.agree, notes=list(resolution.notes),
             absent=list(resolution.absent), mask_v4=state.mask_v4, mask_v6=state.mask_v6)


async def _rediscover(api: ApiClient, settings: Settings, state: ClusterState,
                      on_change: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(REDISCOVER_INTERVAL)
        try:
            before = state.cluster_cidr
            await _discover(api, settings, state)
            if before and state.cluster_cidr != before:
                log.warning("cluster-cidr changed; allocation keeps the range it started with until"
                            " restart", before=[str(n) for n in before],
                            after=[str(n) for n in state.cluster_cidr or ()])
            on_change()
        except Exception:
            log.exception("rediscovery failed")

"""The server owns TLS, certificate reload, readiness and graceful shutdown (as controller-runtime's).

uvicorn builds its own ``SSLContext`` from file names; flannel-guard hands it one
of its own instead (TLS 1.2 minimum, strong suites only, optional client
authentication) so that :class:`~webhook.certs.CertReloader` can load a
rotated pair into the very context the listener uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from types import FrameType

import structlog
import uvicorn
from kubernetes.client import ApiClient

from webhook.allocator import Allocator, ClaimStore, MemoryStore
from webhook.app import create_app
from webhook.certs import CertReloader, server_ssl_context
from webhook.claimer import Claimer
from webhook.claims import ClaimBook
from webhook.cluster import NodeWatcher, api_client, apply_resolution, discover
from webhook.leases import LeaseStore, LeaseWatcher
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

    def __init__(self, config: uvicorn.Config, state: ClusterState, shutdown_delay: float = 0.0) -> None:
        super().__init__(config)
        self._state = state
        self._shutdown_delay = shutdown_delay
        self._exit_at: float | None = None

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


def build_server(settings: Settings, state: ClusterState, allocator: Allocator | None = None,
                 claimer: Claimer | None = None) -> tuple[_Server, CertReloader]:
    """A uvicorn server over HTTPS with flannel-guard's own TLS context."""
    assert settings.tls_cert and settings.tls_key
    if claimer is None:  # claims in memory, shared with the allocator's (standalone, tests)
        claimer = Claimer(allocator.store if allocator is not None else MemoryStore(), state.index,
                          grace=settings.reservation_grace)
    app = create_app(settings, state, allocator=allocator, claimer=claimer)
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
    reloader = CertReloader(context, settings.tls_cert, settings.tls_key)
    return _Server(config, state, settings.shutdown_delay), reloader


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
    watchers: list[NodeWatcher | LeaseWatcher] = []
    store: ClaimStore
    book = ClaimBook()
    if settings.standalone:
        # No API to hear from: ready at once, and never "stale" (no last_sync).
        state.ready = True
        store = MemoryStore(book)
    else:
        api = api_client(settings.kubeconfig, settings.in_cluster)
        await _discover(api, settings, state)
        state.claims_ready = False
        leases = LeaseWatcher(api, settings.namespace, book)
        watchers = [NodeWatcher(api, state), leases]
        tasks.extend(asyncio.create_task(w.run()) for w in watchers)

        async def claims_listed() -> None:
            await leases.synced.wait()
            state.claims_ready = True
        tasks.append(asyncio.create_task(claims_listed()))
        store = LeaseStore(api, settings.namespace, book, duration=int(settings.reservation_grace))
    # A claim younger than this is the node's own without a write (well inside the grace).
    claimer = Claimer(store, state.index, fresh=min(60.0, settings.reservation_grace / 4),
                      grace=settings.reservation_grace)
    tasks.append(asyncio.create_task(claimer.run_reclaimer(min(60.0, settings.reservation_grace))))
    server, reloader = build_server(settings, state, claimer=claimer)
    app = server.config.app

    def ensure_allocator() -> None:
        """Mutating mode needs a known cluster-cidr; start allocating once there is one."""
        if settings.allocate and state.cluster_cidr and app.state.allocator is None:
            allocator = Allocator(state.cluster_cidr, index=state.index, store=store,
                                  mask_v4=state.mask_v4, mask_v6=state.mask_v6,
                                  grace=settings.reservation_grace)
            app.state.allocator = allocator

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
        for w in watchers:
            w.stop()
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

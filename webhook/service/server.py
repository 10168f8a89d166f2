"""The server owns TLS, certificate reload, readiness and graceful shutdown (as controller-runtime's).

uvicorn builds its own ``SSLContext`` from file names; flannel-guard hands it one
of its own instead (TLS 1.2 minimum, strong suites only, optional client
authentication) so that :class:`~webhook.service.tls.CertReloader` can load a
rotated pair into the very context the listener uses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog
import uvicorn

from webhook.control.allocator import Allocator, ClaimStore, MemoryStore
from webhook.control.claimer import Claimer
from webhook.control.pending import ClaimGate, PendingClaims
from webhook.control.settings import Settings
from webhook.control.state import ClusterState
from webhook.core.claimpolicy import ClaimPolicy
from webhook.core.claims import ClaimBook
from webhook.core.discovery import CidrSource, Resolution
from webhook.kube.assigner import Assigner
from webhook.kube.cluster import api_client, apply_resolution, discover
from webhook.kube.events import EventRecorder
from webhook.kube.leader import LeaderElector
from webhook.kube.leases import LeaseStore, LeaseWatcher
from webhook.kube.policyparams import PolicyParamsWriter
from webhook.kube.sources import LiveSources, guarded_order
from webhook.kube.watch import NodeWatcher, Reflector
from webhook.service import limits
from webhook.service.app import AdmissionFastPath, create_app
from webhook.service.connections import ConnectionGuard
from webhook.service.probes import ProbeServer, build_probe_server
from webhook.service.tls import CertReloader, server_ssl_context

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

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
        self._state.stopping = True
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
        AdmissionFastPath(app),
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
        # Nobody sits between kube-apiserver and the webhook: X-Forwarded-* headers are a
        # caller's claim, not a fact (and uvicorn's middleware for them costs every request).
        proxy_headers=False,
    )
    config.load()
    context = server_ssl_context(settings.tls_cert, settings.tls_key, settings.client_ca)
    guard = ConnectionGuard(context, registry=app.state.metrics.registry)
    # uvicorn calls its http_protocol_class once per accepted connection.
    config.http_protocol_class = guard  # type: ignore[assignment]
    reloader = CertReloader(context, settings.tls_cert, settings.tls_key)
    return _Server(config, state, settings.shutdown_delay, guard), reloader




async def serve(settings: Settings, *, cidr_source: str) -> None:
    """Serve until SIGTERM/SIGINT; readiness goes false as shutdown begins.

    Standalone: the cluster-cidr is the flag's, the index holds what this process
    admitted, reservations live in memory. With an API: the cluster-cidr is
    discovered (and rediscovered every 5 minutes), the index follows a watch of
    Nodes, reservations are Leases in ``settings.namespace``.
    """
    # The API calls admissions await (claims, reads) run in worker threads: enough of them that
    # a burst of registrations is not served six at a time (the default on two cores).
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="api"))
    state = ClusterState(cluster_cidr=settings.cluster_cidr, cidr_source=cidr_source,
                         mask_v4=settings.mask_v4 or 24, mask_v6=settings.mask_v6 or 64)
    tasks: list[asyncio.Task[None]] = []
    api = None
    watchers: list[Reflector] = []
    stoppers: list[Callable[[], None]] = []
    events: EventRecorder | None = None
    store: ClaimStore
    orphan_after = min(120.0, settings.reservation_grace / 2)

    def policy() -> ClaimPolicy:
        """What a claim is judged against now (the cluster-cidr and masks follow discovery)."""
        return ClaimPolicy(state.cluster_cidr, state.mask_v4, state.mask_v6, orphan_after=orphan_after,
                           pending_max=settings.pending_claims_max,
                           pending_share=settings.pending_claims_share, skew=settings.claim_clock_skew)

    # Only claims that are claims occupy a CIDR (issue 28): the gate sets the others apart.
    book = ClaimBook(gate=ClaimGate(policy))
    pending = PendingClaims(book, state.index, policy, unassigned=lambda: state.unassigned)
    if settings.standalone:
        # No API to hear from: ready at once, and never "stale" (no last_sync).
        state.ready = True
        store = MemoryStore(book)
    else:
        api = api_client(settings.kubeconfig, settings.in_cluster)
        state.claims_ready = False
        leases = LeaseWatcher(api, settings.namespace, book)
        watchers = [NodeWatcher(api, state), leases]
        # The lists first, discovery beside them: a 15,000-node list is most of the time to ready.
        tasks.extend(asyncio.create_task(w.run()) for w in watchers)
        await _discover(api, settings, state)
        book.retrust()  # claims listed before the cluster-cidr was known are judged against it now

        async def claims_listed() -> None:
            await leases.synced.wait()
            state.claims_ready = True
        tasks.append(asyncio.create_task(claims_listed()))
        store = LeaseStore(api, settings.namespace, book, duration=int(settings.reservation_grace))
        events = EventRecorder(api, _identity())
    # A claim younger than this is the node's own without a write (well inside the grace).
    claimer = Claimer(store, state.index, fresh=min(60.0, settings.reservation_grace / 4),
                      grace=settings.reservation_grace, orphan_after=orphan_after,
                      index_confirmed=lambda: None if settings.standalone else state.last_sync_wall,
                      pending=pending)
    tasks.append(asyncio.create_task(claimer.run_reclaimer(min(30.0, settings.reservation_grace / 2))))
    server, reloader = build_server(settings, state, claimer=claimer)
    app = server.config.app
    app.state.events = events
    app.state.metrics.observe(state, lambda: app.state.allocator, pending)
    app.state.pending = pending
    probe: ProbeServer | None = None
    probe_task: asyncio.Task[Any] | None = None
    if settings.probe_port:
        probe = build_probe_server(settings, state, app.state.metrics)
        probe_task = asyncio.create_task(probe.serve())

    # Whether another replica leads (the elector, once it runs): this one then walks its own region.
    follows: list[Callable[[], bool]] = [lambda: False]

    def ensure_allocator() -> None:
        """Mutating mode needs a known cluster-cidr; allocate from the current one.

        A changed cluster-cidr gets a new allocator at once (the claims and the index are
        shared, so nothing held is forgotten); nodes outside the new range keep their CIDRs.
        """
        current: Allocator | None = app.state.allocator
        wanted = state.cluster_cidr if settings.allocate else None
        key = (wanted, state.mask_v4, state.mask_v6, state.service_ranges)
        if current is not None and getattr(current, "key", None) == key:
            return
        if current is not None:
            current.close()
            app.state.allocator = None
        if wanted:
            try:
                allocator = Allocator(wanted, index=state.index, store=store, mask_v4=state.mask_v4,
                                      mask_v6=state.mask_v6, grace=settings.reservation_grace,
                                      service_ranges=state.service_ranges, pending=pending,
                                      # One process holds standalone's claims: no replica to
                                      # keep apart, kube-controller-manager's order from 0.
                                      identity="" if settings.standalone else _identity(),
                                      follower=lambda: follows[0]())
                allocator.key = key  # type: ignore[attr-defined]
                app.state.allocator = allocator
            except ValueError as e:  # a mask the range cannot hold: say so, allocate nothing
                log.error("cannot allocate from the cluster-cidr", error=str(e)[:200])

    ensure_allocator()
    tasks.append(asyncio.create_task(reloader.run(settings.cert_reload_interval)))
    if api is not None:
        def on_resolution(resolution: Resolution) -> None:
            before = state.cluster_cidr
            _apply(settings, state, resolution)
            if before != state.cluster_cidr:
                log.warning("cluster-cidr changed", before=[str(n) for n in before or ()],
                            after=[str(n) for n in state.cluster_cidr or ()], source=state.cidr_source)
            ensure_allocator()
            book.retrust()  # a claim outside the new range (or of the old mask) holds nothing now

        live = LiveSources(api, _flag(settings), settings.rules.flannel_configmaps, on_resolution)
        watchers.extend(live.watchers)
        tasks.extend(asyncio.create_task(w.run()) for w in live.watchers)
        # Every Node gets a podCIDR: the loop runs on the elected replica while flannel-guard
        # is the allocator (kube-controller-manager does not allocate).
        duration = settings.leader_lease_duration
        elector = LeaderElector(api, settings.namespace, _identity(), lease_duration=duration,
                                renew_deadline=max(2, duration * 2 // 3), retry_period=max(1, duration // 5))
        elector.start()
        follows[0] = elector.follows
        stoppers.append(elector.stop)
        assigner = Assigner(api, state, lambda: app.state.allocator, events=app.state.events,
                            enabled=lambda: settings.allocate and not state.kcm_allocates)
        tasks.append(asyncio.create_task(assigner.run(elector.leading)))
        # The opt-in admission policy's parameters (manifests/components/admission-policy).
        params = PolicyParamsWriter(api, settings.namespace, state)
        tasks.append(asyncio.create_task(params.run(elector.leading)))

        # An exhausted range does not stop the loop: a block set free wakes it at once.
        def freed(cidr: object, held: bool) -> None:
            if not held:
                assigner.wake()
        book.subscribe(freed)
        state.index.subscribe(lambda _n, removed, added: assigner.wake() if removed and not added else None)
    log.info("serving", host=settings.host, port=settings.port, probe_port=settings.probe_port,
             mode=settings.mode.value,
             standalone=settings.standalone, cluster_cidr=state.view().describe_cidr(),
             cidr_source=state.cidr_source, allocate=app.state.allocator is not None)
    try:
        await server.serve()
    finally:
        state.stopping = True
        if probe is not None and probe_task is not None:
            # Liveness stays answered until the webhook port has drained, then this closes too.
            probe.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await probe_task
        for w in watchers:
            w.stop()
        for stop in stoppers:
            stop()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if api is not None:
            api.close()
        log.info("stopped")


_IDENTITY = f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:12]}"


def _identity() -> str:
    """This replica's name in the leader election and its Events: the pod (else the host) and a
    random suffix, as client-go's leader election examples do, so two processes never share one."""
    return _IDENTITY


def _flag(settings: Settings) -> CidrSource | None:
    if not settings.cluster_cidr:
        return None
    return CidrSource("--cluster-cidr flag", tuple(settings.cluster_cidr),
                      ",".join(map(str, settings.cluster_cidr)))


def _apply(settings: Settings, state: ClusterState, resolution: Resolution) -> None:
    apply_resolution(state, resolution)
    # Mask flags given to flannel-guard win over what kube-controller-manager says.
    if settings.mask_v4:
        state.mask_v4 = settings.mask_v4
    if settings.mask_v6:
        state.mask_v6 = settings.mask_v6


async def _discover(api: ApiClient, settings: Settings, state: ClusterState) -> None:
    flannel = await _read_flannel(api, settings)
    resolution = await discover(api, settings.cluster_cidr, flannel=flannel)
    _apply(settings, state, resolution)
    log.info("cluster-cidr discovered", cluster_cidr=state.view().describe_cidr(),
             source=state.cidr_source, agree=resolution.agree, notes=list(resolution.notes),
             absent=list(resolution.absent), mask_v4=state.mask_v4, mask_v6=state.mask_v6,
             flannel_defines=resolution.flannel_defines)


async def _read_flannel(api: ApiClient, settings: Settings) -> list[dict[str, Any]]:
    """The guarded flannel ConfigMaps that exist, in their deciding order (a start-up read)."""
    from urllib.parse import quote

    from kubernetes.client.exceptions import ApiException

    from webhook.kube.raw import raw_request

    def read(ns: str, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(raw_request(api, "read_namespaced_config_map",
                                          f"/api/v1/namespaces/{quote(ns)}/configmaps/{quote(name)}",
                                          timeout=(5.0, 5.0)))
        except (ApiException, OSError, ValueError):
            return None  # absent or unreadable: the watch says why and follows it

    # All at once (each is a round trip), kept in their deciding order.
    docs = await asyncio.gather(*(asyncio.to_thread(read, ns, name)
                                  for ns, name in guarded_order(settings.rules.flannel_configmaps)))
    return [doc for doc in docs if isinstance(doc, dict)]

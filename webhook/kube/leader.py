"""One replica at a time: leader election on a ``coordination.k8s.io`` Lease.

The pinned ``kubernetes`` client's ``kubernetes.leaderelection`` does the
election (client-go's algorithm: observe the record, take it over once it has not
been renewed for ``lease_duration``, renew every ``retry_period``, give up after
``renew_deadline`` without a renewal). It is synchronous and blocking, so it runs
in a daemon thread of its own and reports to the event loop through
:attr:`LeaderElector.leading`, an :class:`asyncio.Event`.

What it does not do, and this class adds: the lock is bound to this process's
API client (the library's ``LeaseLock`` builds a client from the global default
configuration), a lost leadership is followed by a new candidacy, and the
settings are checked here (the library calls ``sys.exit`` on a bad one). It
cannot release the Lease on shutdown: the next leader takes over once
``lease_duration`` has passed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import kubernetes.client
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

__all__ = ["LEADER_LEASE", "LeaderElector"]

log = logging.getLogger(__name__)
# The library logs every renewal at info: keep its warnings only.
logging.getLogger("leaderelection").setLevel(logging.WARNING)

LEADER_LEASE = "flannel-guard-assigner"


class LeaderElector:
    """Campaign for the Lease ``name`` in ``namespace`` as ``identity`` until :meth:`stop`."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, identity: str, *,
                 name: str = LEADER_LEASE, lease_duration: int = 15, renew_deadline: int = 10,
                 retry_period: int = 2) -> None:
        if not (retry_period >= 1 and renew_deadline > 1.2 * retry_period
                and lease_duration > renew_deadline):
            raise ValueError("leader election needs retry_period >= 1, renew_deadline > 1.2 x"
                             " retry_period and lease_duration > renew_deadline")
        self._api = api
        self._namespace = namespace
        self.identity = identity
        self._name = name
        self._timing = (lease_duration, renew_deadline, retry_period)
        self.leading = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = threading.Event()
        self.terms = 0
        self._election: Any = None

    def follows(self) -> bool:
        """Whether another replica held the leader Lease when it was last read (issue 26: this
        replica then looks for free blocks in its own region of the range)."""
        record = getattr(self._election, "observed_record", None)
        holder = getattr(record, "holder_identity", None)
        return bool(holder) and holder != self.identity

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._campaign, name="leader-election", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def _set(self, value: bool) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self.leading.set if value else self.leading.clear)

    def _campaign(self) -> None:
        while not self._stopped.is_set():
            lock = LeaseLock(self._name, self._namespace, self.identity)
            lock.api_instance = kubernetes.client.CoordinationV1Api(self._api)
            duration, deadline, retry = self._timing

            def started() -> None:
                self.terms += 1
                log.info("leading: %s holds %s/%s", self.identity, self._namespace, self._name)
                self._set(True)

            def stopped() -> None:
                log.info("no longer leading: %s", self.identity)
                self._set(False)

            config: Any = electionconfig.Config(lock, duration, deadline, retry, started, stopped)
            try:
                self._election = leaderelection.LeaderElection(config)
                self._election.run()
            except Exception:  # the library's own errors: campaign again after a pause
                log.exception("leader election failed")
            self._set(False)
            self._stopped.wait(retry)

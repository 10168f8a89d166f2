"""The elected replica keeps the admission policy's parameter ConfigMap current.

The ValidatingAdmissionPolicy ``flannel-guard-node-podcidrs`` (opt-in,
manifests/components/admission-policy) reads the cluster-cidr and node mask sizes from
the ConfigMap ``flannel-guard-policy-params`` in flannel-guard's namespace. While this
replica leads (:class:`~webhook.kube.leader.LeaderElector`), a pass reads it and, when it is
missing or says something else than discovery (:mod:`webhook.core.policyparams`), creates
or replaces it: within a second of a change of the cluster-cidr or masks, and once a minute
(a ConfigMap deleted or edited by hand). Nothing is written while the cluster-cidr is unknown: the binding
then finds either no ConfigMap (``parameterNotFoundAction: Allow``) or the last values.

RBAC (manifests/base/rbac.yaml): get and update of that one ConfigMap by name, and create
in flannel-guard's namespace (create cannot be limited to a name).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import kubernetes.client
import structlog
import urllib3
from kubernetes.client.exceptions import ApiException

from webhook.control.state import ClusterState
from webhook.core.constants import POLICY_PARAMS_CONFIGMAP
from webhook.core.policyparams import params_data, same_params
from webhook.kube.raw import raw_request

__all__ = ["PolicyParamsWriter"]

log = structlog.get_logger("flannel_guard.policyparams")

_TIMEOUT = (5.0, 10.0)


def _rfc3339(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


class PolicyParamsWriter:
    """Creates or replaces the parameter ConfigMap from ``state`` while ``leading`` is set."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, state: ClusterState, *,
                 interval: float = 60.0, poll: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self._api = api
        self._namespace = namespace
        self._state = state
        self._interval = interval
        self._poll = poll
        self._clock = clock
        self._path = f"/api/v1/namespaces/{quote(namespace)}/configmaps"
        #: Set after each pass that left the ConfigMap current (tests await it).
        self.current = asyncio.Event()
        #: Set while the loop waits to lead (writes nothing).
        self.parked = asyncio.Event()
        self.writes = 0

    async def run(self, leading: asyncio.Event) -> None:
        """Until cancelled: while leading, a pass when discovery changes (looked at every ``poll``
        seconds, no request) and every ``interval`` seconds (a deleted or edited ConfigMap)."""
        confirmed: tuple[object, ...] | None = None
        checked = 0.0
        while True:
            if not leading.is_set():
                confirmed = None  # leading again: read it again first
                self.parked.set()
                await leading.wait()
                self.parked.clear()
            state = self._state
            facts = (state.cluster_cidr, state.mask_v4, state.mask_v6, state.cidr_source)
            if facts != confirmed or time.monotonic() - checked >= self._interval:
                try:
                    outcome = await self.sync_once()
                except Exception:
                    log.exception("policy parameters pass failed")
                    outcome = "failed"
                checked = time.monotonic()
                confirmed = facts if outcome in ("created", "replaced", "current") else None
                if confirmed is not None:
                    self.current.set()
            await asyncio.sleep(self._poll)

    async def sync_once(self) -> str:
        """One pass: ``created``, ``replaced``, ``current``, ``unknown`` (no cluster-cidr) or ``failed``."""
        state = self._state
        if not state.cluster_cidr:
            return "unknown"
        wanted = params_data(state.cluster_cidr, state.mask_v4, state.mask_v6, source=state.cidr_source,
                             observed_at=_rfc3339(self._clock()))
        try:
            stored = await asyncio.to_thread(self._read)
            if stored is None:
                await asyncio.to_thread(self._write, "create_namespaced_config_map", self._path,
                                        self._body(wanted, None))
                outcome = "created"
            elif same_params(stored.get("data"), wanted):
                return "current"
            else:
                rv = (stored.get("metadata") or {}).get("resourceVersion")
                await asyncio.to_thread(self._write, "replace_namespaced_config_map",
                                        f"{self._path}/{quote(POLICY_PARAMS_CONFIGMAP)}",
                                        self._body(wanted, rv))
                outcome = "replaced"
        except ApiException as e:
            # 409: another leader wrote it meanwhile (the next pass reads it); 403: no RBAC.
            log.warning("policy parameters not written", status=e.status, reason=(e.reason or "")[:80])
            return "failed"
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            log.warning("policy parameters not written", error=f"{type(e).__name__}: {e}"[:200])
            return "failed"
        self.writes += 1
        log.info("policy parameters written", outcome=outcome, namespace=self._namespace,
                 name=POLICY_PARAMS_CONFIGMAP, cluster_cidr=wanted["clusterCIDRs"],
                 mask_v4=wanted["nodeCIDRMaskSizeIPv4"], mask_v6=wanted["nodeCIDRMaskSizeIPv6"])
        return outcome

    def _body(self, data: dict[str, str], resource_version: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": POLICY_PARAMS_CONFIGMAP, "namespace": self._namespace,
                                "labels": {"app.kubernetes.io/part-of": "flannel-guard"}}
        if resource_version:
            meta["resourceVersion"] = resource_version  # a replace conditional on what was read
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}

    def _read(self) -> dict[str, Any] | None:
        try:
            raw = raw_request(self._api, "read_namespaced_config_map",
                              f"{self._path}/{quote(POLICY_PARAMS_CONFIGMAP)}", timeout=_TIMEOUT)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("the ConfigMap is not a JSON object")
        return doc

    def _write(self, operation: str, path: str, body: dict[str, Any]) -> None:
        raw_request(self._api, operation, path, body=body, timeout=_TIMEOUT)

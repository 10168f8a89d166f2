"""The thin I/O shell around :mod:`webhook.core.discovery` and the node index.

* :func:`discover` reads the kube-controller-manager pod(s), the ``kubeadm-config``
  and ``kube-proxy`` ConfigMaps in kube-system and the server Nodes (k3s/RKE2 node-args)
  and hands them to the pure parsers.
  A source that answers 404 or 403 (or cannot be reached) is absent, with a note:
  it needs fewer RBAC rights to try and handle the failure than to check first.
* :class:`NodeWatcher` keeps :attr:`ClusterState.index` current, in the shape of
  kopf's ``watching.py``: list Nodes, mark synced, watch from the list's
  resourceVersion, relist on 410 Gone, back off (capped, exponential, with jitter)
  on connection errors and API restarts. Only name + podCIDRs are kept per node;
  the list and the watch stream are read as raw JSON, never as client models.

The kubernetes client is synchronous: every call runs in a worker thread
(:func:`asyncio.to_thread`) with a timeout, so the event loop serving admissions
never blocks and nothing waits forever (the watch's read timeout is a little
above its server-side ``timeoutSeconds``). The index is only ever changed on the
event loop's thread: the worker thread parses, the loop applies.

When the API is unreachable (the policy)
-----------------------------------------
The last known cluster-cidr and node index keep serving: refusing every
admission because the API blinked would hurt more than judging against a
slightly old picture. ``/readyz`` becomes true after the first successful list
and stays true while the API is away, so that both replicas do not go unready
together during a brief API restart (that would fail every admission by
``failurePolicy``). Past a bound (:data:`STALENESS_BOUND`, 300 s) without any
confirmation from the API (a list, a watch event, a bookmark, a watch that ended
cleanly), :func:`staleness_note` returns a warning that admission responses
carry, and the operator sees it in ``kubectl`` output.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import kubernetes.client
import kubernetes.config
import urllib3
from kubernetes.client.exceptions import ApiException

from webhook.control.state import ClusterState
from webhook.core.cidr import IPNetwork
from webhook.core.discovery import CidrSource, Resolution, flag_source
from webhook.core.nodeargs import SERVER_LABELS
from webhook.core.resolve import resolution_from
from webhook.kube.raw import raw_request

__all__ = [
    "STALENESS_BOUND",
    "api_client",
    "apply_resolution",
    "discover",
    "staleness_note",
]

log = logging.getLogger(__name__)

#: Seconds without a confirmation from the API after which responses carry a warning.
STALENESS_BOUND = 300.0
#: Label of kubeadm's (and most installers') kube-controller-manager static pod.
_KCM_LABEL = ("component", "kube-controller-manager")
#: Errors that mean "the API did not answer properly"; anything else is a bug and propagates.
_TRANSIENT = (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError)


def api_client(kubeconfig: Path | None, in_cluster: bool) -> kubernetes.client.ApiClient:
    """A client from the pod's service account (``in_cluster``) or a kubeconfig file.

    ``kubeconfig=None`` outside the cluster means ``$KUBECONFIG`` / ``~/.kube/config``.
    """
    cfg = kubernetes.client.Configuration()
    if in_cluster:
        kubernetes.config.load_incluster_config(client_configuration=cfg)
    else:
        kubernetes.config.load_kube_config(
            config_file=str(kubeconfig) if kubeconfig else None, client_configuration=cfg)
    # One attempt per call: our own loop retries with backoff, and a retried read
    # timeout would multiply the bound of every call.
    cfg.retries = False
    # The loaders' token-refresh hook re-applies the whole config before every request, and the
    # client's host setter then reads the proxy variables out of the environment again (~0.4 ms
    # of each API call, measured: bench/RESULTS.md). The proxy was resolved from the environment
    # as the config was loaded; a running process's environment does not change.
    if getattr(cfg, "_proxy_from_env", False):
        cfg._proxy_from_env = False
    return kubernetes.client.ApiClient(cfg)


def _trim(text: object, limit: int = 120) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _why(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason or ''}".strip()
    return _trim(f"{type(exc).__name__}: {exc}", 100)


# --- discovery --------------------------------------------------------------------------------


async def discover(
    api: kubernetes.client.ApiClient,
    flag: tuple[IPNetwork, ...] | str | None = None,
    *,
    flag_origin: str = "--cluster-cidr flag",
    namespace: str = "kube-system",
    timeout: float = 5.0,
    flannel: Sequence[dict[str, Any]] | None = None,
) -> Resolution:
    """Read every cluster-cidr source the API has and resolve them (:func:`webhook.core.resolve.resolve`).

    ``flag`` is the operator's ``--cluster-cidr`` (text or parsed). The reads
    run concurrently, each in a thread with ``timeout`` seconds (connect and read).
    """
    def get(what: str, operation: str, path: str, **kwargs: Any) -> tuple[Any, str | None]:
        """(parsed JSON, None) or (None, why this source is absent). Runs in a worker thread."""
        try:
            return json.loads(raw_request(api, operation, path, timeout=(timeout, timeout), **kwargs)), None
        except ApiException as e:
            if e.status == 404:
                return None, f"{what}: not found (404); source absent"
            if e.status in (401, 403):
                return None, f"{what}: not readable ({e.status}); source absent (check RBAC)"
            return None, f"{what}: {_why(e)}; source absent"
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            return None, f"{what}: unreachable ({_why(e)}); source absent"

    selector = "=".join(_KCM_LABEL)
    base = f"/api/v1/namespaces/{quote(namespace)}"
    answers = await asyncio.gather(
        asyncio.to_thread(get, f"pods in {namespace} ({selector})", "list_namespaced_pod",
                          f"{base}/pods", label_selector=selector),
        asyncio.to_thread(get, f"ConfigMap {namespace}/kubeadm-config", "read_namespaced_config_map",
                          f"{base}/configmaps/kubeadm-config"),
        asyncio.to_thread(get, f"ConfigMap {namespace}/kube-proxy", "read_namespaced_config_map",
                          f"{base}/configmaps/kube-proxy"),
        *(asyncio.to_thread(get, f"nodes ({label})", "list_node", "/api/v1/nodes", label_selector=label)
          for label in SERVER_LABELS),
    )
    (pods, kubeadm, proxy) = (doc for doc, _ in answers[:3])
    servers = {n.get("metadata", {}).get("name"): n for doc, _ in answers[3:] for n in _items(doc)}
    notes = [note for _, note in answers if note]
    if isinstance(flag, str):
        flag_src = flag_source(flag, flag_origin) if flag else None
    else:
        flag_src = CidrSource(flag_origin, tuple(flag), ",".join(map(str, flag))) if flag else None
    return resolution_from(flag_src, _items(pods), kubeadm if isinstance(kubeadm, dict) else None,
                           proxy if isinstance(proxy, dict) else None, flannel or (), notes=notes,
                           pods_listed=isinstance(pods, dict), namespace=namespace,
                           flannel_fallback=flannel is not None, servers=list(servers.values()))


def _items(doc: object) -> list[dict[str, Any]]:
    items = doc.get("items") if isinstance(doc, dict) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def apply_resolution(state: ClusterState, resolution: Resolution) -> None:
    """Put a discovery result into the serving state (cluster-cidr, origin, masks, notes)."""
    state.mask_v4, state.mask_v6 = resolution.mask_v4, resolution.mask_v6
    origin = resolution.effective.origin if resolution.effective else "no source"
    # Sources holding different values: the effective one may be wrong (no automatic fixes then).
    # The flannel ConfigMap as the only source is not a disagreement with itself.
    defined_by = resolution.effective.ref if resolution.flannel_defines and resolution.effective else None
    notes = resolution.notes
    state.set_cidr(resolution.networks, origin, notes,
                   disputed=not resolution.agree and not resolution.flannel_defines,
                   flannel_defines=resolution.flannel_defines, defined_by=defined_by)
    state.kcm_allocates = resolution.allocate_node_cidrs is True
    state.service_ranges = resolution.service.networks if resolution.service else ()


def staleness_note(state: ClusterState, now: float, bound: float = STALENESS_BOUND) -> str | None:
    """A warning when the API last confirmed the node index more than ``bound`` seconds before ``now``.

    ``now`` is on the :func:`time.monotonic` clock (as ``state.last_sync``). None when
    fresh, or when there never was a sync (standalone mode, or not ready yet:
    ``/readyz`` says so then).
    """
    if state.last_sync is None:
        return None
    age = now - state.last_sync
    if age <= bound:
        return None
    # Rounded, not truncated: 301 s after a sync on the monotonic clock can be 300.99... (float
    # arithmetic on a large clock value), which is 301 s, not 300.
    return (f"has not heard from the Kubernetes API for {round(age)}s: judged against"
            " the last known cluster-cidr and node podCIDRs")

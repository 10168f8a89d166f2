"""``gather``, the thin I/O shell of ``doctor``: read what the diagnosis needs from the API, read-only.

Raw JSON only, a timeout on every call; 403 and 404 are noted and the diagnosis
goes on with what could be read. Only an API that cannot be reached at all (or
refuses the credentials) raises :class:`ClusterUnreadable`. Lists are paged
(``limit``) and capped, so a 15,000-node cluster costs a bounded number of calls.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import kubernetes.client
import urllib3
from kubernetes.client.exceptions import ApiException

from webhook.core.constants import (
    FLANNEL_CONFIGMAPS,
    LEASE_POLICY,
    NAMESPACE,
    NODE_POLICY,
    POLICY_PARAMS_CONFIGMAP,
    SERVICE,
    TLS_SECRET,
)
from webhook.core.discovery import from_controller_manager_pod
from webhook.core.nodeargs import from_nodes
from webhook.core.rules.configmap import NET_CONF_KEY
from webhook.doctor.facts import (
    ClaimFacts,
    ClusterFacts,
    ConfigMapFacts,
    GuardFacts,
    PodFacts,
    PolicyFacts,
)
from webhook.doctor.klog import known_lines, last_error
from webhook.doctor.model import FLANNEL_POD_LABEL
from webhook.doctor.readers import (
    container_config,
    event_facts,
    flannel_container,
    items_of,
    kube_proxy_mode,
    metadata_of,
    node_facts,
    pod_facts,
    string_data,
    webhook_facts,
    workload_pod,
)
from webhook.doctor.sections.annotations import nodes_to_read_logs_of
from webhook.doctor.sections.kubelet import SANDBOX_REASON
from webhook.doctor.sections.pods import CANAL_POD_LABEL
from webhook.kube.cluster import discover
from webhook.kube.leases import ANNOTATION_CIDR, LABEL_MANAGED, lease_times

__all__ = ["DEFAULT_FLANNEL_CONFIGMAPS", "ClusterUnreadable", "gather"]

DEFAULT_FLANNEL_CONFIGMAPS = FLANNEL_CONFIGMAPS  # one precedence, in webhook.core.constants
_LOG_TAIL = 20
_LOG_HEAD_BYTES = 65536  # flannel logs its interface choice at start-up: the head of the log
_PAGE = 500
_MAX_PAGES = 200  # 100,000 objects per list at most
_KCM_SELECTOR = "component=kube-controller-manager"
# flannel-guard's reservation Leases (webhook/kube/leases.py writes them; read here by their shape).
_LEASE_SELECTOR = "=".join(LABEL_MANAGED)
_LEASE_CIDR = ANNOTATION_CIDR


class ClusterUnreadable(Exception):
    """Raised by :func:`gather` when the API cannot be reached or refuses the credentials (exit 2)."""


def _reason(exc: BaseException) -> str:
    """A short reason for a connection failure: urllib3 wraps the socket error twice."""
    inner: BaseException = exc
    while isinstance(inner, urllib3.exceptions.MaxRetryError) and inner.reason is not None:
        inner = inner.reason
    text = " ".join(str(inner).split())
    if "Connection refused" in text or isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    if isinstance(inner, urllib3.exceptions.TimeoutError | TimeoutError):
        return "timed out"
    return text[:160] or type(inner).__name__


async def gather(api: kubernetes.client.ApiClient, cluster_cidr: str | None = None, *, timeout: float = 5.0,
                 flannel_configmaps: Sequence[tuple[str, str]] = DEFAULT_FLANNEL_CONFIGMAPS,
                 guard_namespace: str = NAMESPACE) -> ClusterFacts:
    """Read what ``diagnose`` needs. Read-only; every call bounded by ``timeout`` seconds.

    Raises :class:`ClusterUnreadable` when the API cannot be reached, refuses the
    credentials (401) or answers the Node list with a server error.
    """
    core = kubernetes.client.CoreV1Api(api)
    apps = kubernetes.client.AppsV1Api(api)
    adm = kubernetes.client.AdmissionregistrationV1Api(api)
    disc = kubernetes.client.DiscoveryV1Api(api)
    net = kubernetes.client.NetworkingV1Api(api)
    coord = kubernetes.client.CoordinationV1Api(api)
    host = api.configuration.host
    bound = (timeout, timeout)
    notes: list[str] = []
    guard_notes: list[str] = []

    def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
        resp = call(*args, _preload_content=False, _request_timeout=bound, **kwargs)
        return bytes(resp.data)

    def get(what: str, call: Callable[..., Any], *args: Any, into: list[str] | None = None,
            **kwargs: Any) -> Any:
        """Parsed JSON, or None with a note (403, another error); 404 is None silently. Worker thread."""
        try:
            return json.loads(raw(call, *args, **kwargs))
        except ApiException as e:
            if e.status == 404:
                return None
            rbac = " (check RBAC)" if e.status in (401, 403) else ""
            text = f"{what}: HTTP {e.status} {e.reason or ''}".rstrip()
            (notes if into is None else into).append(text + rbac)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            (notes if into is None else into).append(f"{what}: {_reason(e)}")
        return None

    def paged(what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = []
        token = None
        for _ in range(_MAX_PAGES):
            doc = get(what, call, *args, limit=_PAGE, **({"_continue": token} if token else {}), **kwargs)
            if doc is None:
                return items or None
            items += items_of(doc)
            token = (doc.get("metadata") or {}).get("continue")
            if not token:
                return items
        notes.append(f"{what}: more than {_PAGE * _MAX_PAGES} objects, the rest not read")
        return items

    nodes_readable = True
    try:
        node_doc = json.loads(await asyncio.to_thread(raw, core.list_node))
    except ApiException as e:
        if e.status not in (403, 404):
            raise ClusterUnreadable(f"the Kubernetes API at {host} answered HTTP {e.status}"
                                    f" {e.reason or ''} to GET /api/v1/nodes".rstrip()) from e
        notes.append(f"nodes: HTTP {e.status} {e.reason or ''} (check RBAC: list nodes)".rstrip())
        node_doc, nodes_readable = None, False
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise ClusterUnreadable(f"cannot reach the Kubernetes API at {host}: {_reason(e)}") from e
    except ValueError as e:
        raise ClusterUnreadable(f"the Kubernetes API at {host} did not answer JSON: {e}") from e

    def thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return asyncio.to_thread(fn, *args, **kwargs)

    flannel_namespaces = list(dict.fromkeys(ns for ns, _ in flannel_configmaps))
    calls = {
        "resolution": discover(api, cluster_cidr, timeout=timeout),
        "kcm": thread(get, "kube-controller-manager pods", core.list_namespaced_pod, "kube-system",
                      label_selector=_KCM_SELECTOR),
        "proxy": thread(get, "ConfigMap kube-system/kube-proxy", core.read_namespaced_config_map,
                        "kube-proxy", "kube-system"),
        "events": thread(get, f"events ({SANDBOX_REASON})", core.list_event_for_all_namespaces,
                         field_selector=f"reason={SANDBOX_REASON}", limit=_PAGE),
        "workloads": thread(paged, "running pods", core.list_pod_for_all_namespaces,
                            field_selector="status.phase=Running"),
        "servicecidrs": thread(get, "ServiceCIDRs", net.list_service_cidr),
        "leases": thread(get, f"Leases in {guard_namespace}", coord.list_namespaced_lease, guard_namespace,
                         label_selector=_LEASE_SELECTOR, into=guard_notes),
        "deployment": thread(get, f"Deployment {guard_namespace}/{SERVICE}", apps.read_namespaced_deployment,
                             SERVICE, guard_namespace, into=guard_notes),
        "validating": thread(get, f"ValidatingWebhookConfiguration {SERVICE}",
                             adm.read_validating_webhook_configuration, SERVICE, into=guard_notes),
        "mutating": thread(get, f"MutatingWebhookConfiguration {SERVICE}",
                           adm.read_mutating_webhook_configuration, SERVICE, into=guard_notes),
        "service": thread(get, f"Service {guard_namespace}/{SERVICE}", core.read_namespaced_service, SERVICE,
                          guard_namespace, into=guard_notes),
        "slices": thread(get, f"EndpointSlices of {guard_namespace}/{SERVICE}",
                         disc.list_namespaced_endpoint_slice, guard_namespace,
                         label_selector=f"kubernetes.io/service-name={SERVICE}", into=guard_notes),
        "secret": thread(get, f"Secret {guard_namespace}/{TLS_SECRET}", core.read_namespaced_secret,
                         TLS_SECRET, guard_namespace, into=guard_notes),
        "params": thread(get, f"ConfigMap {guard_namespace}/{POLICY_PARAMS_CONFIGMAP}",
                         core.read_namespaced_config_map, POLICY_PARAMS_CONFIGMAP, guard_namespace,
                         into=guard_notes),
        **{f"{kind} {name}": thread(get, f"ValidatingAdmissionPolicy{kind} {name}", call, name,
                                    into=guard_notes)
           for name in (NODE_POLICY, LEASE_POLICY)
           for kind, call in (("", adm.read_validating_admission_policy),
                              ("Binding", adm.read_validating_admission_policy_binding))},
        **{f"cm {ns}/{name}": thread(get, f"ConfigMap {ns}/{name}", core.read_namespaced_config_map, name, ns)
           for ns, name in flannel_configmaps},
        **{f"pods {ns}": thread(get, f"pods in {ns} ({FLANNEL_POD_LABEL})", core.list_namespaced_pod, ns,
                                label_selector=FLANNEL_POD_LABEL) for ns in flannel_namespaces},
        "pods canal": thread(get, f"pods in kube-system ({CANAL_POD_LABEL})", core.list_namespaced_pod,
                             "kube-system", label_selector=CANAL_POD_LABEL),
    }
    got = dict(zip(calls, await asyncio.gather(*calls.values()), strict=True))

    configmaps = []
    for ns, name in flannel_configmaps:
        doc = got[f"cm {ns}/{name}"]
        if isinstance(doc, dict):
            text = (doc.get("data") or {}).get(NET_CONF_KEY)
            configmaps.append(ConfigMapFacts(ns, name, text if isinstance(text, str) else None))
    raw_pods = [p for ns in flannel_namespaces for p in items_of(got[f"pods {ns}"])
                if (metadata_of(p).get("labels") or {}).get("app") == "flannel"]
    raw_pods += [p for p in items_of(got["pods canal"])  # RKE2's rke2-canal-*, Canal's canal-*
                 if (metadata_of(p).get("labels") or {}).get("k8s-app") == "canal"]
    pods = [pod_facts(p) for p in raw_pods]
    nodes = [n for n in map(node_facts, items_of(node_doc)) if n is not None]
    shared = nodes_to_read_logs_of(nodes)

    def read_log(pod: Mapping[str, Any], facts: PodFacts) -> tuple[str | None, tuple[str, ...]]:
        container = flannel_container(pod)
        what = f"log of pod {facts.ref}"
        last, lines = None, ()
        try:
            if not facts.ready:
                text = raw(core.read_namespaced_pod_log, facts.name, facts.namespace, container=container,
                           tail_lines=_LOG_TAIL).decode("utf-8", "replace")
                if not text.strip() and facts.restarts:
                    # Just restarted: the reason is in the previous container's log.
                    text = raw(core.read_namespaced_pod_log, facts.name, facts.namespace, container=container,
                               tail_lines=_LOG_TAIL, previous=True).decode("utf-8", "replace")
                last, lines = last_error(text), known_lines(text)
            if facts.node in shared:
                head = raw(core.read_namespaced_pod_log, facts.name, facts.namespace, container=container,
                           limit_bytes=_LOG_HEAD_BYTES).decode("utf-8", "replace")
                lines = tuple(dict.fromkeys([*lines, *known_lines(head)]))
        except ApiException as e:
            notes.append(f"{what}: HTTP {e.status} {e.reason or ''}".rstrip()
                         + (" (check RBAC: get pods/log)" if e.status == 403 else ""))
        except (urllib3.exceptions.HTTPError, OSError) as e:
            notes.append(f"{what}: {_reason(e)}")
        return last, lines

    logs = await asyncio.gather(*(thread(read_log, p, f) if not f.ready or f.node in shared else _none()
                                  for p, f in zip(raw_pods, pods, strict=True)))
    pods = [PodFacts(f.namespace, f.name, f.node, f.ready, f.state, f.restarts, *(log or (None, ())))
            for f, log in zip(pods, logs, strict=True)]

    # k3s/RKE2 run kube-controller-manager in the server process: its flags are the servers' node-args.
    kcm = (*(from_controller_manager_pod(p) for p in items_of(got["kcm"])),
           *from_nodes(items_of(node_doc))[0])
    workloads = tuple(w for w in map(workload_pod, got["workloads"] or []) if w is not None)
    service_cidrs = tuple(str(c) for s in items_of(got["servicecidrs"])
                          for c in (s.get("spec") or {}).get("cidrs") or [])
    reservations = tuple((str((lease.get("spec") or {}).get("holderIdentity") or ""),
                          str((metadata_of(lease).get("annotations") or {}).get(_LEASE_CIDR, "")))
                         for lease in items_of(got["leases"]))
    claims = tuple(ClaimFacts(str(metadata_of(lease).get("name") or "")[:253], holder[:253], cidr[:64],
                              *lease_times(lease))
                   for lease, (holder, cidr) in zip(items_of(got["leases"]), reservations, strict=True))
    args, env = container_config(got["deployment"])
    ready = not_ready = 0
    for sl in items_of(got["slices"]):
        for ep in sl.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                not_ready += 1
            else:
                ready += 1
    secret = got["secret"]
    cert_b64 = ((secret or {}).get("data") or {}).get("tls.crt") if isinstance(secret, dict) else None
    try:
        serving_cert = base64.b64decode(cert_b64, validate=True) if isinstance(cert_b64, str) else None
    except ValueError:
        serving_cert = None
    guard = GuardFacts(namespace=guard_namespace, deployment_found=isinstance(got["deployment"], dict),
                       args=args, env=env, validating=webhook_facts(got["validating"]),
                       mutating=webhook_facts(got["mutating"]),
                       service_found=isinstance(got["service"], dict),
                       ready_endpoints=ready, not_ready_endpoints=not_ready, serving_cert=serving_cert,
                       unreadable=tuple(guard_notes),
                       policies=tuple(PolicyFacts.read(n, got[f" {n}"], got[f"Binding {n}"])
                                      for n in (NODE_POLICY, LEASE_POLICY)),
                       policy_params=string_data(got["params"]))
    return ClusterFacts(resolution=got["resolution"], configmaps=tuple(configmaps), nodes=tuple(nodes),
                        pods=tuple(pods), nodes_readable=nodes_readable, notes=tuple(notes),
                        events=tuple(event_facts(e) for e in items_of(got["events"])),
                        workload_pods=workloads,
                        controller_managers=kcm, kube_proxy_mode=kube_proxy_mode(got["proxy"]),
                        service_cidrs=service_cidrs, reservations=reservations, claims=claims, guard=guard,
                        flannel_configmaps=tuple(flannel_configmaps), gathered_at=time.time())




async def _none() -> None:
    return None

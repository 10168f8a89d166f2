"""API objects as ``doctor``'s facts: pure readers of the raw JSON :func:`~webhook.doctor.collect.gather` got.

Each takes one object (a dict, or whatever the API answered) and keeps only what the
diagnosis reads; a missing or malformed field is an empty value, never an exception.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import yaml

from webhook.core.nodemodel import pod_cidrs
from webhook.doctor.facts import (
    FLANNEL_ANNOTATION_PREFIX,
    ConditionFacts,
    EventFacts,
    NodeFacts,
    PodFacts,
    WebhookFacts,
    WorkloadPodFacts,
)
from webhook.doctor.model import FLANNEL_CONTAINER

__all__ = [
    "container_config",
    "event_facts",
    "flannel_container",
    "items_of",
    "kube_proxy_mode",
    "metadata_of",
    "node_facts",
    "pod_facts",
    "string_data",
    "webhook_facts",
    "workload_pod",
]


def items_of(doc: object) -> list[dict[str, Any]]:
    items = doc.get("items") if isinstance(doc, dict) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def metadata_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def node_facts(obj: Mapping[str, Any]) -> NodeFacts | None:
    name = metadata_of(obj).get("name")
    if not isinstance(name, str) or not name:
        return None
    cidrs = pod_cidrs(obj)  # type: ignore[arg-type]  # webhook/core/nodemodel.py: as the API stores them
    annotations = {k: str(v) for k, v in (metadata_of(obj).get("annotations") or {}).items()
                   if isinstance(k, str) and k.startswith(FLANNEL_ANNOTATION_PREFIX)}
    status = obj.get("status") or {}
    addresses = tuple((str(a.get("type", "")), str(a.get("address", "")))
                      for a in status.get("addresses") or [] if isinstance(a, dict))
    conditions = tuple(ConditionFacts(str(c.get("type", "")), str(c.get("status", "")),
                                      str(c.get("reason") or ""), str(c.get("message") or ""))
                       for c in status.get("conditions") or [] if isinstance(c, dict))
    os_label = str((metadata_of(obj).get("labels") or {}).get("kubernetes.io/os", ""))
    return NodeFacts(name, tuple(str(c) for c in cidrs), annotations, addresses, conditions, os_label)


def flannel_container(pod: Mapping[str, Any]) -> str | None:
    names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or [] if isinstance(c, dict)]
    if FLANNEL_CONTAINER in names:
        return FLANNEL_CONTAINER
    return names[0] if names and isinstance(names[0], str) else None


def pod_facts(pod: Mapping[str, Any]) -> PodFacts:
    meta = metadata_of(pod)
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or [] if isinstance(c, dict))
    container = flannel_container(pod)
    state, restarts = str(status.get("phase") or ""), 0
    for cs in status.get("containerStatuses") or []:
        if not isinstance(cs, dict) or cs.get("name") != container:
            continue
        restarts = int(cs.get("restartCount") or 0)
        st = cs.get("state") or {}
        for key in ("waiting", "terminated"):
            if isinstance(st.get(key), dict):
                state = str(st[key].get("reason") or key.capitalize())
                break
        else:
            if "running" in st:
                state = "Running"
    return PodFacts(namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
                    node=(pod.get("spec") or {}).get("nodeName"), ready=ready, state=state, restarts=restarts)


def workload_pod(pod: Mapping[str, Any]) -> WorkloadPodFacts | None:
    spec, status, meta = pod.get("spec") or {}, pod.get("status") or {}, metadata_of(pod)
    if spec.get("hostNetwork") or not spec.get("nodeName"):
        return None
    ips = tuple(str(i.get("ip")) for i in status.get("podIPs") or [] if isinstance(i, dict) and i.get("ip"))
    if not ips and status.get("podIP"):
        ips = (str(status["podIP"]),)
    if not ips:
        return None
    return WorkloadPodFacts(str(meta.get("namespace") or ""), str(meta.get("name") or ""),
                            str(spec["nodeName"]), ips)


def event_facts(e: Mapping[str, Any]) -> EventFacts:
    inv = e.get("involvedObject") or {}
    source = e.get("source") or {}
    node = source.get("host") or e.get("reportingInstance") or ""
    return EventFacts(namespace=str(metadata_of(e).get("namespace") or ""), kind=str(inv.get("kind") or ""),
                      name=str(inv.get("name") or ""), reason=str(e.get("reason") or ""),
                      message=str(e.get("message") or ""), node=str(node), count=int(e.get("count") or 1))


def webhook_facts(doc: object) -> tuple[WebhookFacts, ...] | None:
    if not isinstance(doc, dict):
        return None
    out = []
    for w in doc.get("webhooks") or []:
        if not isinstance(w, dict):
            continue
        cc = w.get("clientConfig") or {}
        svc = cc.get("service") or {}
        try:
            bundle = base64.b64decode(cc.get("caBundle") or "", validate=True)
        except ValueError:
            bundle = b""
        out.append(WebhookFacts(str(w.get("name") or ""),
                                (str(svc.get("namespace")), str(svc.get("name"))) if svc else None,
                                bundle, str(w.get("failurePolicy") or "Fail")))
    return tuple(out)


def container_config(deployment: object) -> tuple[tuple[str, ...], dict[str, str]]:
    spec = ((deployment or {}).get("spec") or {}).get("template", {}).get("spec", {}) \
        if isinstance(deployment, dict) else {}
    container = next((c for c in spec.get("containers") or [] if isinstance(c, dict)), {})
    args = tuple(str(a) for a in [*(container.get("command") or []), *(container.get("args") or [])])
    env = {str(e.get("name")): str(e.get("value") or "") for e in container.get("env") or []
           if isinstance(e, dict) and "value" in e}
    return args, env


def kube_proxy_mode(doc: object) -> str | None:
    text = ((doc or {}).get("data") or {}).get("config.conf") if isinstance(doc, dict) else None
    if not isinstance(text, str):
        return None
    try:
        conf = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    mode = conf.get("mode") if isinstance(conf, dict) else None
    return str(mode or "")


def string_data(doc: object) -> dict[str, str] | None:
    """A ConfigMap's data, its string values only (None: no ConfigMap)."""
    if not isinstance(doc, dict):
        return None
    return {str(k): v for k, v in (doc.get("data") or {}).items() if isinstance(v, str)}

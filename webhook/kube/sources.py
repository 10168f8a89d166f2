"""The cluster-cidr sources, followed live: a watch of each object they are read from.

kube-controller-manager's pods (its flags), ``kube-system/kubeadm-config``,
``kube-system/kube-proxy``, the guarded flannel ConfigMaps and the server Nodes (a k3s or
RKE2 server's flags are its Node's node-args annotation) are each listed and
watched (:class:`ObjectWatcher`, a :class:`~webhook.kube.watch.Reflector`); after
every change the pure :func:`webhook.core.resolve.resolution_from` resolves them again
and :class:`LiveSources` hands the result on. A kubeadm-config edited, a
controller-manager restarted with new flags, a second flannel ConfigMap that
disagrees: each shows in admission responses within a watch event's latency,
not at a periodic re-read.

Only the objects' names, labels and the fields the parsers read are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import kubernetes.client

from webhook.core.constants import FLANNEL_CONFIGMAPS
from webhook.core.discovery import CidrSource, Resolution
from webhook.core.nodeargs import DISTRIBUTIONS, SERVER_LABELS
from webhook.core.resolve import resolution_from
from webhook.kube.raw import raw_response
from webhook.kube.watch import Reflector

__all__ = ["LiveSources", "ObjectWatcher", "guarded_order"]

log = logging.getLogger(__name__)

KCM_SELECTOR = "component=kube-controller-manager"


def guarded_order(refs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The guarded flannel ConfigMaps in the order that decides between them.

    :data:`~webhook.core.constants.FLANNEL_CONFIGMAPS`'s order (``kube-flannel`` first:
    flannel's manifests moved there from ``kube-system``), then any other named by
    ``--flannel-configmap``, ``kube-flannel`` first.
    """
    rank = {ref: i for i, ref in enumerate(FLANNEL_CONFIGMAPS)}
    return sorted(refs, key=lambda r: (rank.get(r, len(rank)), r[0] != "kube-flannel", r))


_NODE_ARGS = tuple(annotation for _, annotation in DISTRIBUTIONS)


def _slim(obj: dict[str, Any]) -> dict[str, Any]:
    """What the parsers read of a pod, ConfigMap or Node: metadata (name, namespace, labels, the
    node-args annotations), spec.containers, data, status.addresses."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    out: dict[str, Any] = {"metadata": {k: meta[k] for k in ("name", "namespace", "labels") if k in meta}}
    annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
    kept = {k: annotations[k] for k in _NODE_ARGS if k in annotations}
    if kept:
        out["metadata"]["annotations"] = kept
    status = obj.get("status")
    if isinstance(status, dict) and isinstance(status.get("addresses"), list):
        out["status"] = {"addresses": status["addresses"][:16]}
    if isinstance(obj.get("spec"), dict):
        containers = obj["spec"].get("containers")
        out["spec"] = {"containers": containers if isinstance(containers, list) else []}
    if isinstance(obj.get("data"), dict):
        out["data"] = obj["data"]
    return out


class ObjectWatcher(Reflector):
    """List + watch pods or ConfigMaps of one namespace (by label, or one by name), or Nodes by label."""

    def __init__(self, api: kubernetes.client.ApiClient, plural: str, namespace: str,
                 on_change: Callable[[], None], *, label_selector: str | None = None,
                 name: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        assert plural in ("pods", "configmaps", "nodes")
        where = f"{namespace}/" if namespace else ""
        self.what = f"{plural} {where}{name or label_selector}"
        self._api = api
        self._plural = plural
        self._namespace = namespace
        self._selector: dict[str, str] = {}
        if label_selector:
            self._selector["label_selector"] = label_selector
        if name:
            self._selector["field_selector"] = f"metadata.name={name}"
        self._on_change = on_change
        self.objects: dict[str, dict[str, Any]] = {}

    def _call(self, *, watch: bool = False, **kwargs: Any) -> Any:
        kwargs.update(self._selector)
        if self._plural == "nodes":
            if watch:
                return raw_response(self._api, "list_node", "/api/v1/nodes", watch=True, **kwargs)
            return raw_response(self._api, "list_node", "/api/v1/nodes", **kwargs)
        path = f"/api/v1/namespaces/{self._namespace}/{self._plural}"
        if self._plural == "pods":
            if watch:
                return raw_response(self._api, "list_namespaced_pod", path, watch=True, **kwargs)
            return raw_response(self._api, "list_namespaced_pod", path, **kwargs)
        if watch:
            return raw_response(self._api, "list_namespaced_config_map", path, watch=True, **kwargs)
        return raw_response(self._api, "list_namespaced_config_map", path, **kwargs)

    def _parse(self, obj: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        name = self._key(obj)
        return (name, _slim(obj)) if name else None

    def _key(self, obj: dict[str, Any]) -> str:
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        return name if isinstance(name, str) else ""

    def _replace(self, entries: list[Any]) -> None:
        self.objects = dict(entries)
        self._on_change()

    def _upsert(self, entry: Any) -> None:
        self.objects[entry[0]] = entry[1]
        self._on_change()

    def _delete(self, key: Any) -> None:
        if self.objects.pop(key, None) is not None:
            self._on_change()

    def absent_note(self) -> str | None:
        """Why this source says nothing yet (never listed: the last error), for ``Resolution.absent``."""
        if self.synced.is_set():
            return None
        return f"{self.what}: not listed yet ({self.last_error or 'waiting'}); source absent"


class LiveSources:
    """Every cluster-cidr source as a watch; ``on_resolution`` hears each new resolution."""

    def __init__(self, api: kubernetes.client.ApiClient, flag: CidrSource | None,
                 flannel_refs: Iterable[tuple[str, str]],
                 on_resolution: Callable[[Resolution], None], *, namespace: str = "kube-system",
                 **kwargs: Any) -> None:
        self._flag = flag
        self._on_resolution = on_resolution
        self._namespace = namespace
        changed = self._changed
        self.pods = ObjectWatcher(api, "pods", namespace, changed, label_selector=KCM_SELECTOR, **kwargs)
        self.kubeadm = ObjectWatcher(api, "configmaps", namespace, changed, name="kubeadm-config", **kwargs)
        self.proxy = ObjectWatcher(api, "configmaps", namespace, changed, name="kube-proxy", **kwargs)
        self.flannel = [ObjectWatcher(api, "configmaps", ns, changed, name=name, **kwargs)
                        for ns, name in guarded_order(flannel_refs)]
        # k3s/RKE2 servers: a label selector each (no OR in a selector), few Nodes, merged by name.
        self.servers = [ObjectWatcher(api, "nodes", "", changed, label_selector=label, **kwargs)
                        for label in SERVER_LABELS]
        self.watchers: list[ObjectWatcher] = [self.pods, self.kubeadm, self.proxy, *self.flannel,
                                              *self.servers]
        self._last: Resolution | None = None

    def resolution(self) -> Resolution:
        """The sources as they are now, resolved (pure over what the watches hold)."""
        absent = [n for w in self.watchers[:3] if (n := w.absent_note())]
        return resolution_from(
            self._flag,
            list(self.pods.objects.values()),
            self.kubeadm.objects.get("kubeadm-config"),
            self.proxy.objects.get("kube-proxy"),
            [doc for w in self.flannel for doc in w.objects.values()],
            notes=absent, pods_listed=self.pods.synced.is_set(), namespace=self._namespace,
            servers=list({name: doc for w in self.servers for name, doc in w.objects.items()}.values()),
        )

    def _changed(self) -> None:
        if not all(w.synced.is_set() or w.failures for w in self.watchers):
            return  # until every source has answered once: no flip-flop of a half-read picture
        resolution = self.resolution()
        if self._last is not None and (resolution.networks, resolution.notes, resolution.mask_v4,
                                       resolution.mask_v6, resolution.flannel_defines,
                                       resolution.allocate_node_cidrs) == (
                self._last.networks, self._last.notes, self._last.mask_v4, self._last.mask_v6,
                self._last.flannel_defines, self._last.allocate_node_cidrs):
            return
        self._last = resolution
        self._on_resolution(resolution)

    def stop(self) -> None:
        for w in self.watchers:
            w.stop()

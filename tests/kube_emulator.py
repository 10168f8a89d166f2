"""Kubernetes APIs served over HTTP on 127.0.0.1 for the cluster tests.

Two of them, because each does what the other cannot:

* :func:`kmock_api` starts ``kmock``'s :class:`kmock.KubernetesEmulator` (an
  in-memory object store over HTTP) with pods and configmaps declared, so that a
  list in a namespace where nothing was put answers an empty list rather than
  kmock's 404 for an unknown resource. Good for discovery (plain GETs); note that
  it does not filter by ``labelSelector`` and its watch ignores
  ``resourceVersion`` / ``timeoutSeconds`` and has no 410.
* :class:`FakeKubeApi`, a small aiohttp server with the watch semantics the node
  watcher depends on: numbered resourceVersions, a history that a watch resumes
  from, ``timeoutSeconds``, bookmarks, 410 Gone (as an HTTP status or as an
  ERROR event, for a compacted history), dropped connections and downtime
  (:meth:`FakeKubeApi.down` / :meth:`FakeKubeApi.up` on the same port). It also
  serves namespaced pods (with ``labelSelector``) and configmaps.

Both keep every request for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import kubernetes.client

__all__ = [
    "ApiThread",
    "FakeKubeApi",
    "Seen",
    "client_for",
    "free_port",
    "kcm_pod",
    "kmock_api",
    "kmock_put",
    "kube_proxy_configmap",
    "kubeadm_configmap",
    "kubeconfig_file",
    "node",
    "rss_kib",
]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def kubeconfig_file(path: Path, url: str) -> Path:
    """Write a kubeconfig for a plain-HTTP loopback API at ``url`` to ``path``."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "emu",
        "clusters": [{"name": "emu", "cluster": {"server": url}}],
        "users": [{"name": "emu", "user": {"token": "test"}}],
        "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "emu"}}],
    }))
    return path


class ApiThread:
    """A :class:`FakeKubeApi` on its own event loop in a thread, so server processes can reach it."""

    def __init__(self, api: FakeKubeApi | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.api = api if api is not None else FakeKubeApi(keep_requests=False)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.api.up())

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Run ``coro`` on the API's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def acall(self, coro: Any) -> Any:
        """Run ``coro`` on the API's loop and await it from another loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        """Stop serving, cancel what is pending on the loop (no stray tasks at exit), close it."""
        async def shutdown() -> None:
            await self.api.down()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.call(shutdown(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def client_for(url: str) -> kubernetes.client.ApiClient:
    """A kubernetes client for a plain-HTTP loopback server, no retries."""
    cfg = kubernetes.client.Configuration()
    cfg.host = url.rstrip("/")
    cfg.retries = False
    return kubernetes.client.ApiClient(cfg)


def node(name: str, *cidrs: str, rv: str | None = None) -> dict[str, Any]:
    """A Node as the API returns it, with only what matters here."""
    spec: dict[str, Any] = {}
    if cidrs:
        spec = {"podCIDR": cidrs[0], "podCIDRs": list(cidrs)}
    meta: dict[str, Any] = {"name": name, "labels": {"kubernetes.io/hostname": name}}
    if rv is not None:
        meta["resourceVersion"] = rv
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": spec,
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


# --- objects shaped as kubeadm writes them ---------------------------------------------------


def kcm_pod(
    name: str = "kube-controller-manager-cp1",
    *,
    cluster_cidr: str | None = "10.244.0.0/16",
    allocate: bool = True,
    service_range: str | None = "10.96.0.0/12",
    extra: tuple[str, ...] = (),
    in_args: bool = False,
) -> dict[str, Any]:
    """kubeadm's kube-controller-manager static pod (``cmd/kubeadm/app/phases/controlplane``).

    kubeadm adds ``--allocate-node-cidrs=true`` and ``--cluster-cidr`` only when
    podSubnet is set. ``in_args`` moves the flags to ``args`` as ``--flag value``.
    """
    flags: list[tuple[str, str]] = []
    if allocate:
        flags.append(("allocate-node-cidrs", "true"))
    flags += [
        ("authentication-kubeconfig", "/etc/kubernetes/controller-manager.conf"),
        ("authorization-kubeconfig", "/etc/kubernetes/controller-manager.conf"),
        ("bind-address", "127.0.0.1"),
        ("client-ca-file", "/etc/kubernetes/pki/ca.crt"),
    ]
    if cluster_cidr is not None:
        flags.append(("cluster-cidr", cluster_cidr))
    flags += [
        ("cluster-name", "kubernetes"),
        ("cluster-signing-cert-file", "/etc/kubernetes/pki/ca.crt"),
        ("cluster-signing-key-file", "/etc/kubernetes/pki/ca.key"),
        ("controllers", "*,bootstrapsigner,tokencleaner"),
        ("kubeconfig", "/etc/kubernetes/controller-manager.conf"),
        ("leader-elect", "true"),
        ("requestheader-client-ca-file", "/etc/kubernetes/pki/front-proxy-ca.crt"),
        ("root-ca-file", "/etc/kubernetes/pki/ca.crt"),
        ("service-account-private-key-file", "/etc/kubernetes/pki/sa.key"),
    ]
    if service_range is not None:
        flags.append(("service-cluster-ip-range", service_range))
    flags.append(("use-service-account-credentials", "true"))
    container: dict[str, Any] = {
        "name": "kube-controller-manager",
        "image": "registry.k8s.io/kube-controller-manager:v1.31.0",
        "imagePullPolicy": "IfNotPresent",
    }
    if in_args:
        container["command"] = ["/usr/local/bin/kube-controller-manager"]
        # A bool flag takes no separate value in pflag: bare ``--allocate-node-cidrs``.
        container["args"] = [a for k, v in flags
                             for a in ((f"--{k}",) if k == "allocate-node-cidrs" else (f"--{k}", v))]
        container["args"] += list(extra)
    else:
        container["command"] = ["kube-controller-manager", *(f"--{k}={v}" for k, v in flags), *extra]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "kube-system",
            "labels": {"component": "kube-controller-manager", "tier": "control-plane"},
            "annotations": {"kubernetes.io/config.source": "file"},
        },
        "spec": {"containers": [container], "hostNetwork": True,
                 "priorityClassName": "system-node-critical"},
    }


_KUBEADM_HEAD = {
    "v1beta2": "apiServer:\n  extraArgs:\n    authorization-mode: Node,RBAC\n"
               "  timeoutForControlPlane: 4m0s\napiVersion: kubeadm.k8s.io/v1beta2\n",
    "v1beta3": "apiServer:\n  extraArgs:\n    authorization-mode: Node,RBAC\n"
               "  timeoutForControlPlane: 4m0s\napiVersion: kubeadm.k8s.io/v1beta3\n",
    "v1beta4": "apiServer: {}\napiVersion: kubeadm.k8s.io/v1beta4\n"
               "caCertificateValidityPeriod: 87600h0m0s\ncertificateValidityPeriod: 8760h0m0s\n",
}
_KUBEADM_CM = {
    "v1beta2": "controllerManager: {}\ndns:\n  type: CoreDNS\n",
    "v1beta3": "controllerManager: {}\ndns: {}\n",
    # v1beta4: extraArgs became a list of name/value pairs.
    "v1beta4": "controllerManager:\n  extraArgs:\n  - name: node-cidr-mask-size\n    value: \"24\"\n"
               "dns: {}\nencryptionAlgorithm: RSA-2048\n",
}


def kubeadm_configmap(
    version: str = "v1beta4", pod_subnet: str | None = "10.244.0.0/16",
    service_subnet: str | None = "10.96.0.0/12",
) -> dict[str, Any]:
    """kube-system/kubeadm-config as ``kubeadm init`` uploads it (``ClusterConfiguration`` YAML)."""
    networking = "networking:\n  dnsDomain: cluster.local\n"
    if pod_subnet is not None:
        networking += f"  podSubnet: {pod_subnet}\n"
    if service_subnet is not None:
        networking += f"  serviceSubnet: {service_subnet}\n"
    text = (
        _KUBEADM_HEAD[version]
        + "certificatesDir: /etc/kubernetes/pki\nclusterName: kubernetes\n"
        + _KUBEADM_CM[version]
        + "etcd:\n  local:\n    dataDir: /var/lib/etcd\nimageRepository: registry.k8s.io\n"
        + "kind: ClusterConfiguration\nkubernetesVersion: v1.31.0\n"
        + networking
        + ("proxy: {}\n" if version == "v1beta4" else "")
        + "scheduler: {}\n"
    )
    data = {"ClusterConfiguration": text}
    if version == "v1beta2":  # kubeadm < 1.22 also kept the ClusterStatus here
        data["ClusterStatus"] = ("apiEndpoints:\n  cp1:\n    advertiseAddress: 192.168.0.10\n"
                                 "    bindPort: 6443\napiVersion: kubeadm.k8s.io/v1beta2\n"
                                 "kind: ClusterStatus\n")
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kubeadm-config", "namespace": "kube-system"}, "data": data}


def kube_proxy_configmap(cluster_cidr: str | None = "10.244.0.0/16") -> dict[str, Any]:
    """kube-system/kube-proxy as kubeadm writes it; ``clusterCIDR: ""`` without a podSubnet."""
    value = cluster_cidr or '""'
    conf = (
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nbindAddress: 0.0.0.0\n"
        "bindAddressHardFail: false\nclientConnection:\n  acceptContentTypes: \"\"\n  burst: 0\n"
        "  contentType: \"\"\n  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\n  qps: 0\n"
        f"clusterCIDR: {value}\nconfigSyncPeriod: 0s\nconntrack:\n  maxPerCore: null\n"
        "  min: null\nkind: KubeProxyConfiguration\nmode: \"\"\n"
    )
    kubeconfig = ("apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n"
                  "    server: https://192.168.0.10:6443\n  name: default\n")
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kube-proxy", "namespace": "kube-system",
                         "labels": {"app": "kube-proxy"}},
            "data": {"config.conf": conf, "kubeconfig.conf": kubeconfig}}


# --- kmock ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def kmock_api() -> AsyncIterator[tuple[kmock.KubernetesEmulator, str]]:
    """kmock's emulator on 127.0.0.1 with v1 pods and configmaps declared (empty lists answer 200)."""
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
        emulator.resources["v1/pods"] = {}
        emulator.resources["v1/configmaps"] = {}
        yield emulator, str(server.url)


def kmock_put(emulator: kmock.KubernetesEmulator, plural: str, obj: dict[str, Any]) -> None:
    """Store a namespaced core/v1 object in the emulator."""
    meta = obj["metadata"]
    emulator.objects[kmock.resource("", "v1", plural), meta["namespace"], meta["name"]] = obj


# --- the watch-capable fake -----------------------------------------------------------------


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, str]


@dataclass
class _Event:
    seq: int
    rv: int
    body: dict[str, Any]


@dataclass
class FakeKubeApi:
    """A loopback Kubernetes API with real list/watch semantics for Nodes.

    Use as ``async with FakeKubeApi() as api:``; ``api.url`` for the client.
    """

    gone_as_http: bool = False  # 410 as an HTTP status instead of an ERROR event in the stream
    requests: list[Seen] = field(default_factory=list)
    keep_requests: bool = True  # long runs turn this off (kmock keeps every request and slows down)
    # Lease writes (create/delete) that fail: before anything is stored (HTTP 500), or after the
    # object is stored but before the answer (the connection drops: the client cannot know).
    lease_fail_before: float = 0.0
    lease_fail_after: float = 0.0
    leases: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    events: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    patches: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rv = 1
        self._seq = 0
        self._compacted = 0  # watches from a resourceVersion below this get 410
        self._history: list[_Event] = []
        self._snapshots: dict[int, list[dict[str, Any]]] = {}  # paged lists in progress, by revision
        self._lease_history: list[_Event] = []  # Lease events, for watches of Leases
        self._object_history: list[_Event] = []  # events of other namespaced objects (put_object)
        self._cond = asyncio.Condition()
        self._generation = 0  # bumped by expire(): open watches end with 410
        self._streams: dict[int, aiohttp.web.BaseRequest] = {}
        self._runner: aiohttp.web.AppRunner | None = None
        self._port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> FakeKubeApi:
        await self.up()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.down()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def up(self) -> None:
        """Listen (again) on 127.0.0.1, on the same port as before if there was one."""
        app = aiohttp.web.Application(middlewares=self._middlewares())
        self._add_routes(app)
        self._runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None,
                                             shutdown_timeout=0.2)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", self._port, reuse_address=True)
        await site.start()
        if not self._port:
            server = site._server
            assert server is not None
            self._port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def _middlewares(self) -> list[Any]:
        """Subclasses add middlewares (e.g. RBAC refusals)."""
        return []

    def _add_routes(self, app: aiohttp.web.Application) -> None:
        """The API paths served; subclasses extend."""
        app.router.add_get("/api/v1/nodes", self._nodes)
        app.router.add_patch("/api/v1/nodes/{name}", self._patch_node)
        app.router.add_post("/api/v1/namespaces/{ns}/events", self._event_create)
        app.router.add_patch("/api/v1/namespaces/{ns}/events/{name}", self._event_patch)
        app.router.add_get("/api/v1/namespaces/{ns}/{plural}", self._list_namespaced)
        app.router.add_get("/api/v1/namespaces/{ns}/{plural}/{name}", self._get_namespaced)
        app.router.add_post("/api/v1/namespaces/{ns}/{plural}", self._create_namespaced)
        app.router.add_put("/api/v1/namespaces/{ns}/{plural}/{name}", self._replace_namespaced)
        leases = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
        app.router.add_post(leases, self._lease_create)
        app.router.add_get(leases, self._lease_list)
        app.router.add_get(leases + "/{name}", self._lease_get)
        app.router.add_put(leases + "/{name}", self._lease_replace)
        app.router.add_delete(leases + "/{name}", self._lease_delete)

    async def down(self) -> None:
        """Stop listening and cut every open connection (an API server restart)."""
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- what tests do to the cluster --------------------------------------------------------

    async def put_node(self, obj: dict[str, Any]) -> None:
        """Create or replace a Node; open watches get ADDED or MODIFIED."""
        name = obj["metadata"]["name"]
        kind = "MODIFIED" if name in self.nodes else "ADDED"
        await self._record(kind, name, copy.deepcopy(obj))

    async def put_object(self, plural: str, obj: dict[str, Any]) -> None:
        """Create or replace a namespaced object (a pod, a ConfigMap); open watches of it hear it."""
        meta = obj["metadata"]
        key = (plural, meta["namespace"], meta["name"])
        async with self._cond:
            kind = "MODIFIED" if key in self.objects else "ADDED"
            self._rv += 1
            stored = copy.deepcopy(obj)
            stored["metadata"]["resourceVersion"] = str(self._rv)
            self.objects[key] = stored
            self._seq += 1
            self._object_history.append(_Event(self._seq, self._rv, {
                "type": kind, "object": stored | {"_plural": plural}}))
            self._cond.notify_all()

    async def delete_object(self, plural: str, namespace: str, name: str) -> None:
        async with self._cond:
            stored = self.objects.pop((plural, namespace, name))
            self._rv += 1
            self._seq += 1
            self._object_history.append(_Event(self._seq, self._rv, {
                "type": "DELETED", "object": stored | {"_plural": plural}}))
            self._cond.notify_all()

    async def delete_node(self, name: str) -> None:
        """Delete a Node; open watches get DELETED."""
        await self._record("DELETED", name, copy.deepcopy(self.nodes[name]))

    async def bookmark(self) -> None:
        """Send a BOOKMARK with the current resourceVersion to open watches."""
        async with self._cond:
            self._seq += 1
            body = {"type": "BOOKMARK", "object": {"apiVersion": "v1", "kind": "Node",
                                                   "metadata": {"resourceVersion": str(self._rv)}}}
            self._history.append(_Event(self._seq, self._rv, body))
            self._cond.notify_all()

    async def expire(self) -> None:
        """Compact the history: every resourceVersion so far is too old (410), open watches end."""
        async with self._cond:
            self._rv += 1
            self._compacted = self._rv
            self._history.clear()
            self._snapshots.clear()
            self._generation += 1
            self._cond.notify_all()

    def drop_watches(self) -> None:
        """Cut open watch connections mid-stream (no chunked terminator: the client sees a broken read)."""
        for request in list(self._streams.values()):
            if request.transport is not None:
                request.transport.abort()
        self._streams.clear()

    def claims(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The podCIDR claim Leases (not the assigning loop's leader-election Lease)."""
        return {k: v for k, v in list(self.leases.items()) if k[1].startswith("podcidr-")}

    def watches(self) -> list[Seen]:
        return [r for r in self.requests if r.path == "/api/v1/nodes" and r.query.get("watch") == "true"]

    def lists(self) -> list[Seen]:
        return [r for r in self.requests if r.path == "/api/v1/nodes" and r.query.get("watch") != "true"]

    def open_streams(self) -> int:
        return len(self._streams)

    # -- serving -----------------------------------------------------------------------------

    async def _record(self, kind: str, name: str, obj: dict[str, Any]) -> None:
        async with self._cond:
            self._rv += 1
            self._seq += 1
            obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
            if kind == "DELETED":
                self.nodes.pop(name, None)
            else:
                self.nodes[name] = obj
            self._history.append(_Event(self._seq, self._rv, {"type": kind, "object": obj}))
            self._cond.notify_all()

    def _seen(self, request: aiohttp.web.Request) -> None:
        if self.keep_requests:
            self.requests.append(Seen(request.method, request.path, dict(request.query)))

    # -- coordination.k8s.io/v1 Leases: create is exclusive (409), as in the API server ------

    def _fault(self, request: aiohttp.web.Request, when: str) -> aiohttp.web.StreamResponse | None:
        chance = self.lease_fail_before if when == "before" else self.lease_fail_after
        if chance and self.rng.random() < chance:
            if when == "before":
                return aiohttp.web.json_response(
                    self._status(500, "InternalError", "injected failure"), status=500)
            assert request.transport is not None
            request.transport.abort()
            return aiohttp.web.Response(status=500)
        return None

    async def _patch_node(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        """A merge patch of a Node (spec only), with the API server's podCIDR immutability."""
        self._seen(request)
        name = request.match_info["name"]
        patch = await request.json()
        if name not in self.nodes:
            return self._node_not_found(name)
        current = copy.deepcopy(self.nodes[name])
        spec = current.setdefault("spec", {})
        new = (patch or {}).get("spec") or {}
        if spec.get("podCIDRs") and new.get("podCIDRs") and new["podCIDRs"] != spec["podCIDRs"]:
            return aiohttp.web.json_response(self._status(
                422, "Invalid", "spec.podCIDRs: Forbidden: node updates may not change podCIDR except"
                " from \"\" to valid"), status=422)
        spec.update(new)
        self.patches.append((name, new))
        await self.put_node(current)
        return aiohttp.web.json_response(self.nodes[name])

    def _node_not_found(self, name: str) -> aiohttp.web.StreamResponse:
        missing = self._status(404, "NotFound", f'nodes "{name}" not found')
        return aiohttp.web.json_response(missing, status=404)

    async def _event_create(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self._seen(request)
        body = await request.json()
        key = (request.match_info["ns"], body["metadata"]["name"])
        if key in self.events:
            return aiohttp.web.json_response(self._status(409, "AlreadyExists", "exists"), status=409)
        self.events[key] = body
        return aiohttp.web.json_response(body, status=201)

    async def _event_patch(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self._seen(request)
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.events:
            return aiohttp.web.json_response(self._status(404, "NotFound", "no such event"), status=404)
        self.events[key].update(await request.json())
        return aiohttp.web.json_response(self.events[key])

    async def _lease_create(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self._seen(request)
        if (failed := self._fault(request, "before")) is not None:
            return failed
        ns = request.match_info["ns"]
        body = await request.json()
        name = body["metadata"]["name"]
        async with self._cond:  # check and insert under one lock: the create is exclusive
            if (ns, name) in self.leases:
                return aiohttp.web.json_response(
                    self._status(409, "AlreadyExists", f'leases.coordination.k8s.io "{name}" already exists'),
                    status=409)
            self._rv += 1
            body["metadata"].update({"namespace": ns, "resourceVersion": str(self._rv),
                                     "uid": f"uid-{self._rv}",
                                     # The API server's clock, to the second, as it stamps objects.
                                     "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            self.leases[(ns, name)] = body
            self._lease_event("ADDED", body)
        if (failed := self._fault(request, "after")) is not None:
            return failed
        return aiohttp.web.json_response(body, status=201)

    def _lease_event(self, kind: str, obj: dict[str, Any]) -> None:
        """Record a Lease event for open Lease watches (the caller holds ``self._cond``)."""
        self._seq += 1
        self._lease_history.append(_Event(self._seq, self._rv, {"type": kind, "object": copy.deepcopy(obj)}))
        self._cond.notify_all()

    async def _lease_replace(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        """PUT: a replace, conditional on metadata.resourceVersion when the body carries one (409)."""
        self._seen(request)
        if (failed := self._fault(request, "before")) is not None:
            return failed
        key = (request.match_info["ns"], request.match_info["name"])
        body = await request.json()
        async with self._cond:
            stored = self.leases.get(key)
            if stored is None:
                return aiohttp.web.json_response(
                    self._status(404, "NotFound", f'leases.coordination.k8s.io "{key[1]}" not found'),
                    status=404)
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != stored["metadata"]["resourceVersion"]:
                return aiohttp.web.json_response(self._status(
                    409, "Conflict",
                    f'Operation cannot be fulfilled on leases.coordination.k8s.io "{key[1]}":'
                    " the object has been modified; please apply your changes to the latest version"
                    " and try again"), status=409)
            self._rv += 1
            meta = body.setdefault("metadata", {})
            meta.update({"namespace": key[0], "name": key[1], "resourceVersion": str(self._rv),
                         "uid": stored["metadata"]["uid"],
                         "creationTimestamp": stored["metadata"]["creationTimestamp"]})
            self.leases[key] = body
            self._lease_event("MODIFIED", body)
        if (failed := self._fault(request, "after")) is not None:
            return failed
        return aiohttp.web.json_response(body)

    async def _lease_list(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self._seen(request)
        ns = request.match_info["ns"]
        selector = request.query.get("labelSelector", "")
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)

        def matches(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata") or {}
            return meta.get("namespace") == ns and all(
                (meta.get("labels") or {}).get(k) == v for k, v in wanted.items())

        if request.query.get("watch") in ("true", "1"):
            return await self._watch_objects(request, matches, self._lease_history,
                                             lambda: list(self.leases.values()))
        items = [copy.deepcopy(obj) for (n, _), obj in self.leases.items() if n == ns and matches(obj)]
        return aiohttp.web.json_response({"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList",
                                          "metadata": {"resourceVersion": str(self._rv)}, "items": items})

    async def _watch_objects(self, request: aiohttp.web.Request, matches: Any, history: list[_Event],
                             current: Any) -> aiohttp.web.StreamResponse:
        """A watch of Leases or other namespaced objects: every event after ``resourceVersion``
        (ADDED for all that exist, from 0), filtered by ``matches``."""
        start = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        resp = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        self._streams[id(request)] = request
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        generation = self._generation
        try:
            async with self._cond:
                if not start:
                    initial = [copy.deepcopy(o) for o in current() if matches(o)]
                    start = self._rv
                else:
                    initial = []
                seq = next((e.seq - 1 for e in history if e.rv > start), self._seq)
            for obj in initial:
                obj.pop("_plural", None)
                await resp.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
            while True:
                async with self._cond:
                    pending = [e for e in history if e.seq > seq]
                    if not pending:
                        remaining = deadline - loop.time()
                        if remaining <= 0 or self._generation != generation:
                            break
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._cond.wait(), remaining)
                        continue
                for event in pending:
                    seq = event.seq
                    if matches(event.body["object"]):
                        body = {"type": event.body["type"], "object": {
                            k: v for k, v in event.body["object"].items() if k != "_plural"}}
                        await resp.write(json.dumps(body).encode() + b"\n")
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._streams.pop(id(request), None)
        return resp

    async def _lease_get(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self._seen(request)
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.leases:
            return aiohttp.web.json_response(
                self._status(404, "NotFound", f'leases.coordination.k8s.io "{key[1]}" not found'), status=404)
        return aiohttp.web.json_response(self.leases[key])

    async def _lease_delete(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self._seen(request)
        if (failed := self._fault(request, "before")) is not None:
            return failed
        key = (request.match_info["ns"], request.match_info["name"])
        options = await request.json() if request.can_read_body else {}
        pre = (options or {}).get("preconditions") or {}
        async with self._cond:
            stored = self.leases.get(key)
            if stored is None:
                return aiohttp.web.json_response(
                    self._status(404, "NotFound", f'leases.coordination.k8s.io "{key[1]}" not found'),
                    status=404)
            meta = stored["metadata"]
            if (pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]) or (
                    pre.get("uid") and pre["uid"] != meta["uid"]):
                return aiohttp.web.json_response(self._status(
                    409, "Conflict",
                    f'Operation cannot be fulfilled on leases.coordination.k8s.io "{key[1]}":'
                    " Precondition failed"), status=409)
            del self.leases[key]
            self._rv += 1
            self._lease_event("DELETED", stored | {"metadata": meta | {"resourceVersion": str(self._rv)}})
        if (failed := self._fault(request, "after")) is not None:
            return failed
        return aiohttp.web.json_response(self._status(200, "", "deleted") | {"status": "Success"})

    @staticmethod
    def _status(code: int, reason: str, message: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}

    async def _nodes(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self._seen(request)
        if request.query.get("watch") in ("true", "1"):
            return await self._watch(request)
        # limit/continue as the API server pages a list (the token here: the snapshot's
        # resourceVersion and an offset; a real token is opaque).
        # The later pages come from the first page's snapshot, as the API server serves them from
        # etcd at that revision, whatever was written since; only a compaction (expire()) makes
        # the token too old. A snapshot holds references: a stored Node is replaced, never changed.
        limit = int(request.query.get("limit") or 0)
        rv, _, offset = (request.query.get("continue") or "").partition(":")
        start = int(offset or 0)
        async with self._cond:
            if rv:
                snapshot = self._snapshots.get(int(rv))
                if snapshot is None:
                    gone = self._status(410, "Expired", "the provided continue parameter is too old")
                    return aiohttp.web.json_response(gone, status=410)
                at = int(rv)
            else:
                wanted = label_selector_matcher(request.query.get("labelSelector", ""))
                snapshot, at = [n for n in self.nodes.values() if wanted(n)], self._rv
            end = start + limit if limit else len(snapshot)
            meta: dict[str, Any] = {"resourceVersion": str(at)}
            if end < len(snapshot):
                meta["continue"] = f"{at}:{end}"
                self._snapshots[at] = snapshot
                while len(self._snapshots) > 8:
                    del self._snapshots[next(iter(self._snapshots))]
            body = {"apiVersion": "v1", "kind": "NodeList", "metadata": meta,
                    "items": [copy.deepcopy(n) for n in snapshot[start:end]]}
        return aiohttp.web.json_response(body)

    async def _watch(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        wanted = label_selector_matcher(request.query.get("labelSelector", ""))
        start = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        gone = self._status(410, "Expired", f"too old resource version: {start} ({self._compacted})")
        if start and start < self._compacted and self.gone_as_http:
            return aiohttp.web.json_response(gone, status=410)
        resp = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)

        async def send(body: dict[str, Any]) -> None:
            await resp.write(json.dumps(body).encode() + b"\n")

        if start and start < self._compacted:
            await send({"type": "ERROR", "object": gone})
            await resp.write_eof()
            return resp
        self._streams[id(request)] = request
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        generation = self._generation
        try:
            if not start:  # resourceVersion unset or "0": synthetic ADDED for what exists
                async with self._cond:
                    initial = [copy.deepcopy(n) for n in self.nodes.values() if wanted(n)]
                    start = self._rv
                for obj in initial:
                    await send({"type": "ADDED", "object": obj})
            seq = next((e.seq - 1 for e in self._history if e.rv > start), self._seq)
            while True:
                async with self._cond:
                    pending = [e for e in self._history if e.seq > seq]
                    expired = self._generation != generation
                    if not pending and not expired:
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._cond.wait(), remaining)
                        continue
                if expired:
                    if not self.gone_as_http:  # else: end cleanly; the rewatch gets HTTP 410
                        await send({"type": "ERROR", "object": gone | {
                            "message": f"too old resource version: {start} ({self._compacted})"}})
                    break
                for event in pending:
                    if event.body["type"] == "BOOKMARK" or wanted(event.body["object"]):
                        await send(event.body)
                    seq = event.seq
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client or drop_watches() cut it
        finally:
            self._streams.pop(id(request), None)
        return resp

    async def _list_namespaced(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self._seen(request)
        ns, plural = request.match_info["ns"], request.match_info["plural"]
        selector = request.query.get("labelSelector", "")
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        fields = request.query.get("fieldSelector", "")
        named = dict(part.split("=", 1) for part in fields.split(",") if "=" in part).get("metadata.name")

        def matches(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata") or {}
            return (obj.get("_plural", plural) == plural and meta.get("namespace", ns) == ns
                    and (named is None or meta.get("name") == named)
                    and all((meta.get("labels") or {}).get(k) == v for k, v in wanted.items()))

        if request.query.get("watch") in ("true", "1"):
            def current() -> list[dict[str, Any]]:
                return [o | {"_plural": p} for (p, n, _), o in self.objects.items()
                        if p == plural and n == ns]
            return await self._watch_objects(request, matches, self._object_history, current)
        items = [
            copy.deepcopy(obj) for (p, n, _), obj in self.objects.items()
            if p == plural and n == ns and matches(obj)
        ]
        return aiohttp.web.json_response({"apiVersion": "v1", "kind": "List",
                                          "metadata": {"resourceVersion": str(self._rv)}, "items": items})

    async def _get_namespaced(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self._seen(request)
        key = (request.match_info["plural"], request.match_info["ns"], request.match_info["name"])
        if key not in self.objects:
            return aiohttp.web.json_response(
                self._status(404, "NotFound", f'{key[0]} "{key[2]}" not found'), status=404)
        return aiohttp.web.json_response(self.objects[key])

    async def _create_namespaced(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        """POST a namespaced object (a ConfigMap): 409 AlreadyExists if the name is taken."""
        self._seen(request)
        ns, plural = request.match_info["ns"], request.match_info["plural"]
        body = await request.json()
        name = body["metadata"]["name"]
        if (plural, ns, name) in self.objects:
            return aiohttp.web.json_response(
                self._status(409, "AlreadyExists", f'{plural} "{name}" already exists'), status=409)
        body["metadata"]["namespace"] = ns
        await self.put_object(plural, body)
        return aiohttp.web.json_response(self.objects[(plural, ns, name)], status=201)

    async def _replace_namespaced(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        """PUT: 404 if absent, 409 Conflict if the body's resourceVersion is not the stored one."""
        self._seen(request)
        key = (request.match_info["plural"], request.match_info["ns"], request.match_info["name"])
        body = await request.json()
        stored = self.objects.get(key)
        if stored is None:
            return aiohttp.web.json_response(
                self._status(404, "NotFound", f'{key[0]} "{key[2]}" not found'), status=404)
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != stored["metadata"]["resourceVersion"]:
            return aiohttp.web.json_response(
                self._status(409, "Conflict", f'Operation cannot be fulfilled on {key[0]} "{key[2]}":'
                             " the object has been modified"), status=409)
        body.setdefault("metadata", {}).update({"namespace": key[1], "name": key[2]})
        await self.put_object(key[0], body)
        return aiohttp.web.json_response(self.objects[key])


def label_selector_matcher(selector: str) -> Callable[[dict[str, Any]], bool]:
    """A label selector's equality and existence terms (``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``),
    as the API server filters a list or a watch by it (a Node's labels)."""
    terms = [s.strip() for s in selector.split(",") if s.strip()]

    def matches(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        for term in terms:
            if "!=" in term:
                key, value = term.split("!=", 1)
                if labels.get(key) == value:
                    return False
            elif "=" in term:
                key, value = term.replace("==", "=").split("=", 1)
                if labels.get(key) != value:
                    return False
            elif term.startswith("!"):
                if term[1:] in labels:
                    return False
            elif term not in labels:
                return False
        return True

    return matches

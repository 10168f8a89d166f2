"""A loopback Kubernetes API for the ``doctor`` tests: the seed's broken cluster, pod logs, and the fixes.

:class:`DoctorKubeApi` is :class:`kube_emulator.FakeKubeApi` plus what the doctor
reads and the node watcher does not: ``GET .../pods/{name}/log`` (``tailLines``,
``limitBytes``), pods and events across namespaces (``fieldSelector`` on dotted
paths, ``limit``/``continue`` paging), any ``/apis/{group}/{version}/...`` object
put with :meth:`DoctorKubeApi.put` (webhook configurations, EndpointSlices,
Deployments, ServiceCIDRs) and, for RBAC tests, paths that answer 403. The object
builders below write what flannel and the kubelet write: flannel's Node
annotations and ``NetworkUnavailable`` condition (flannel ``pkg/subnet/kube/kube.go``),
the kubelet's Ready condition and ``FailedCreatePodSandBox`` events carrying the CNI
plugins' errors. :func:`seed_cluster`
builds the seed (``kubeadm init`` without ``--pod-network-cidr``, flannel
``Network`` 172.18.0.0/16, worker-0001 without a podCIDR, its flannel pod in
CrashLoopBackOff). :func:`apply_fix` applies one machine-readable fix of
``doctor --output json`` to the emulated objects, as an operator would by hand;
a flannel pod restarted on a node that now has a podCIDR comes up Ready, as
flannel would.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import yaml
from kube_emulator import FakeKubeApi, kcm_pod, kube_proxy_configmap, kubeadm_configmap, node

__all__ = [
    "CNI_NOT_INITIALIZED",
    "SEED_LOG",
    "SEED_MESSAGE",
    "DoctorKubeApi",
    "apply_fix",
    "flannel_configmap",
    "flannel_node",
    "flannel_pod",
    "guard_objects",
    "sandbox_event",
    "seed_cluster",
    "workload_pod",
]

#: The kubelet's Ready condition when the runtime reports no CNI network (pkg/kubelet/kubelet.go
#: "container runtime network not ready: %v", containerd's "cni plugin not initialized").
CNI_NOT_INITIALIZED = ("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady"
                       " message:Network plugin returns error: cni plugin not initialized")

SEED_LOG = ('E0218 06:23:22.907246       1 main.go:291] Error registering network: failed to acquire lease:'
            ' node "worker-0001" pod cidr not assigned')
#: SEED_LOG as doctor quotes it: klog's header trimmed.
SEED_MESSAGE = SEED_LOG.split("] ", 1)[1]
_SEED_LOG_TEXT = (
    "I0218 06:23:22.806123       1 main.go:212] CLI flags config: {etcdEndpoints:http://127.0.0.1:4001"
    " kubeSubnetMgr:true}\n"
    "I0218 06:23:22.906011       1 kube.go:120] Waiting 10m0s for node controller to sync\n"
    "I0218 06:23:22.906101       1 kube.go:339] Creating the node lease for IPv4."
    " This is the n.Spec.PodCIDRs: []\n"
    f"{SEED_LOG}\n"
)


@dataclass
class DoctorKubeApi(FakeKubeApi):
    """FakeKubeApi with pod logs and forbidden paths; ``objects`` keys are (plural, namespace, name)."""

    # (namespace, pod) -> the whole log of its flannel container.
    logs: dict[tuple[str, str], str] = field(default_factory=dict)
    # Request paths that answer 403 Forbidden (exact match).
    forbidden: set[str] = field(default_factory=set)

    def _middlewares(self) -> list[Any]:
        @aiohttp.web.middleware
        async def rbac(request: aiohttp.web.Request, handler: Any) -> aiohttp.web.StreamResponse:
            if request.path in self.forbidden:
                self._seen(request)
                return aiohttp.web.json_response(
                    self._status(403, "Forbidden", f"forbidden: {request.path}"), status=403)
            return await handler(request)

        return [*super()._middlewares(), rbac]

    def _add_routes(self, app: aiohttp.web.Application) -> None:
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}/log", self._log)
        app.router.add_get("/api/v1/{plural:pods|events}", self._list_all)
        super()._add_routes(app)  # its Lease routes come first: they keep answering Leases
        app.router.add_get("/apis/{group}/{version}/namespaces/{ns}/{plural}", self._list_all)
        app.router.add_get("/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}", self._get_any)
        app.router.add_get("/apis/{group}/{version}/{plural}", self._list_all)
        app.router.add_get("/apis/{group}/{version}/{plural}/{name}", self._get_any)

    async def _list_all(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        """A list across namespaces (or in one), with labelSelector, fieldSelector and limit/continue."""
        self._seen(request)
        plural, ns = request.match_info["plural"], request.match_info.get("ns")
        labels = _pairs(request.query.get("labelSelector", ""))
        fields = _pairs(request.query.get("fieldSelector", ""))
        items = [obj for (p, n, _), obj in self.objects.items()
                 if p == plural and (ns is None or n == ns)
                 and all((obj["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())
                 and all(_field(obj, k) == v for k, v in fields.items())]
        limit = int(request.query.get("limit") or 0)
        start = int(request.query.get("continue") or 0)
        end = start + limit if limit else len(items)
        meta: dict[str, Any] = {"resourceVersion": "1"}
        if end < len(items):
            meta["continue"] = str(end)
        return aiohttp.web.json_response({"kind": "List", "apiVersion": "v1", "metadata": meta,
                                          "items": copy.deepcopy(items[start:end])})

    async def _get_any(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self._seen(request)
        key = (request.match_info["plural"], request.match_info.get("ns", ""), request.match_info["name"])
        if key not in self.objects:
            return aiohttp.web.json_response(
                self._status(404, "NotFound", f'{key[0]} "{key[2]}" not found'), status=404)
        return aiohttp.web.json_response(self.objects[key])

    async def _log(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self._seen(request)
        ns, name = request.match_info["ns"], request.match_info["name"]
        if ("pods", ns, name) not in self.objects:
            return aiohttp.web.json_response(
                self._status(404, "NotFound", f'pods "{name}" not found'), status=404)
        lines = self.logs.get((ns, name), "").splitlines(keepends=True)
        tail = request.query.get("tailLines")
        if tail:
            lines = lines[-int(tail):]
        text = "".join(lines)
        if request.query.get("limitBytes"):
            text = text.encode()[:int(request.query["limitBytes"])].decode("utf-8", "ignore")
        return aiohttp.web.Response(text=text, content_type="text/plain")

    # -- objects -----------------------------------------------------------------------------

    def put(self, plural: str, obj: dict[str, Any]) -> None:
        """Store ``obj`` under its plural; cluster-scoped objects (no namespace) under namespace ""."""
        meta = obj["metadata"]
        self.objects[plural, meta.get("namespace", ""), meta["name"]] = copy.deepcopy(obj)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return self.objects[plural, namespace, name]


def _pairs(selector: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in selector.split(",") if "=" in part)


def _field(obj: dict[str, Any], path: str) -> str:
    """A fieldSelector's value: the dotted path into the object, as text ("" when absent)."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def flannel_configmap(network: str = "172.18.0.0/16", namespace: str = "kube-flannel",
                      net_conf: str | None = None) -> dict[str, Any]:
    """kube-flannel.yml's ConfigMap with ``Network`` (or the given net-conf.json text)."""
    doc = {"Network": network, "EnableNFTables": False, "Backend": {"Type": "vxlan"}}
    text = net_conf if net_conf is not None else json.dumps(doc, indent=2) + "\n"
    cni = {"name": "cbr0", "cniVersion": "0.3.1", "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kube-flannel-cfg", "namespace": namespace,
                         "labels": {"app": "flannel", "k8s-app": "flannel", "tier": "node"}},
            "data": {"cni-conf.json": json.dumps(cni, indent=2), "net-conf.json": text}}


def flannel_pod(name: str, node_name: str, *, ready: bool = True, namespace: str = "kube-flannel",
                restarts: int = 0) -> dict[str, Any]:
    """A kube-flannel DaemonSet pod; not ready means CrashLoopBackOff."""
    state: dict[str, Any] = ({"running": {"startedAt": "2024-02-18T06:20:00Z"}} if ready else
                             {"waiting": {"reason": "CrashLoopBackOff",
                                          "message": "back-off 5m0s restarting failed container"}})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app": "flannel", "k8s-app": "flannel", "tier": "node",
                                "pod-template-generation": "1"}},
        "spec": {"nodeName": node_name, "hostNetwork": True,
                 "initContainers": [{"name": "install-cni-plugin"}, {"name": "install-cni"}],
                 "containers": [{"name": "kube-flannel",
                                 "image": "docker.io/flannel/flannel:v0.25.1",
                                 "command": ["/opt/bin/flanneld"],
                                 "args": ["--ip-masq", "--kube-subnet-mgr"]}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "kube-flannel", "ready": ready, "restartCount": restarts,
                                   "state": state}],
        },
    }


async def seed_cluster(api: DoctorKubeApi) -> None:
    """The seed: kubeadm init without --pod-network-cidr; flannel 172.18.0.0/16; worker-0001 bare."""
    api.put("pods", kcm_pod(cluster_cidr=None, allocate=False))
    api.put("configmaps", kubeadm_configmap("v1beta3", pod_subnet=None))
    api.put("configmaps", kube_proxy_configmap(None))
    api.put("configmaps", flannel_configmap("172.18.0.0/16"))
    await api.put_node(node("cp1", "172.18.0.0/24"))
    await api.put_node(node("worker-0001"))
    api.put("pods", flannel_pod("kube-flannel-ds-7x9qk", "cp1"))
    api.put("pods", flannel_pod("kube-flannel-ds-j69g6", "worker-0001", ready=False, restarts=3))
    api.logs["kube-flannel", "kube-flannel-ds-j69g6"] = _SEED_LOG_TEXT


def _set_flags(command: list[str], flags: dict[str, str], remove: list[str]) -> list[str]:
    out = [a for a in command
           if not any(a == f"--{r}" or a.startswith(f"--{r}=") for r in [*remove, *flags])]
    return out + [f"--{k}={v}" for k, v in flags.items()]


async def apply_fix(api: DoctorKubeApi, fix: dict[str, Any]) -> None:
    """Do what one fix of ``doctor --output json`` says, to the emulated cluster."""
    action = fix["action"]
    if action == "set-controller-manager-flags":
        for (plural, ns, _), obj in api.objects.items():
            if plural == "pods" and ns == "kube-system" and \
                    obj["metadata"]["labels"].get("component") == "kube-controller-manager":
                container = obj["spec"]["containers"][0]
                container["command"] = _set_flags(container["command"], fix["flags"], fix.get("remove", []))
    elif action in ("set-kubeadm-pod-subnet", "set-kube-proxy-cluster-cidr"):
        cm = api.get("configmaps", fix["namespace"], fix["configMap"])
        key = "ClusterConfiguration" if action == "set-kubeadm-pod-subnet" else "config.conf"
        doc = yaml.safe_load(cm["data"][key])
        if action == "set-kubeadm-pod-subnet":
            doc.setdefault("networking", {})["podSubnet"] = fix["podSubnet"]
        else:
            doc["clusterCIDR"] = fix["clusterCIDR"]
        cm["data"][key] = yaml.safe_dump(doc)
    elif action == "set-flannel-network":
        api.get("configmaps", fix["namespace"], fix["configMap"])["data"]["net-conf.json"] = fix["netConf"]
    elif action == "patch-node":
        current = copy.deepcopy(api.nodes[fix["node"]])
        spec = current.setdefault("spec", {})
        new = fix["patch"]["spec"]
        # The API server: "node updates may not change podCIDR except from \"\" to valid".
        assert not spec.get("podCIDRs") or spec["podCIDRs"] == new["podCIDRs"], "podCIDR is immutable"
        spec.update(new)
        await api.put_node(current)
    elif action == "recreate-node":
        await api.delete_node(fix["node"])
        await api.put_node(node(fix["node"], *fix["podCIDRs"]))
    elif action == "restart-pods":
        for name in fix["pods"]:
            await apply_fix(api, {"action": "restart-pod", "namespace": fix["namespace"], "pod": name})
    elif action == "annotate-node":
        current = copy.deepcopy(api.nodes[fix["node"]])
        current["metadata"].setdefault("annotations", {})[fix["annotation"]] = fix["value"]
        await api.put_node(current)
    elif action == "restart-pod":
        # The DaemonSet's new pod: flannel gets its lease when the node has a podCIDR.
        pod = api.get("pods", fix["namespace"], fix["pod"])
        has_cidr = bool(api.nodes.get(pod["spec"]["nodeName"], {}).get("spec", {}).get("podCIDRs"))
        api.put("pods", flannel_pod(fix["pod"], pod["spec"]["nodeName"], ready=has_cidr,
                                    namespace=fix["namespace"]))
        api.logs.pop((fix["namespace"], fix["pod"]), None)
    else:
        raise AssertionError(f"not a machine-applicable fix: {fix}")


def flannel_node(name: str, *cidrs: str, public_ip: str | None = None, internal_ip: str | None = None,
                 backend: str = "vxlan", vni: int = 1, os: str = "linux", ready_message: str | None = None,
                 network_unavailable: bool = False, flannel_ran: bool = True) -> dict[str, Any]:
    """A Node as the kubelet and flannel's kube subnet manager leave it.

    Annotations as flannel writes them (pkg/subnet/kube/annotations.go names,
    kube.go values; vxlan's backend-data is vxlanLeaseAttrs ``{"VNI":1,"VtepMAC":...}``),
    ``NetworkUnavailable=False FlannelIsUp`` once flannel ran, and the kubelet's
    Ready condition (``ready_message`` makes it NotReady with that message).
    """
    obj = node(name, *cidrs)
    internal = internal_ip or f"192.168.56.{10 + sum(map(ord, name)) % 200}"
    meta = obj["metadata"]
    meta["labels"].update({"kubernetes.io/os": os, "kubernetes.io/arch": "amd64"})
    conditions: list[dict[str, Any]] = []
    if flannel_ran:
        mac = ":".join(f"{(sum(map(ord, name)) * (i + 7)) % 256:02x}" for i in range(6))
        meta["annotations"] = {
            "flannel.alpha.coreos.com/backend-data": json.dumps({"VNI": vni, "VtepMAC": mac},
                                                                separators=(",", ":")),
            "flannel.alpha.coreos.com/backend-type": backend,
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/public-ip": public_ip or internal,
            "node.alpha.kubernetes.io/ttl": "0",
            "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        }
        conditions.append({"type": "NetworkUnavailable", "status": "True" if network_unavailable else "False",
                           "reason": "FlannelIsUp", "message": "Flannel is running on this node",
                           "lastHeartbeatTime": "2026-11-30T09:00:00Z",
                           "lastTransitionTime": "2026-11-30T09:00:00Z"})
    conditions.append({"type": "Ready", "status": "False" if ready_message else "True",
                       "reason": "KubeletNotReady" if ready_message else "KubeletReady",
                       "message": ready_message or "kubelet is posting ready status",
                       "lastHeartbeatTime": "2026-11-30T09:00:00Z",
                       "lastTransitionTime": "2026-11-30T09:00:00Z"})
    obj["status"] = {"addresses": [{"type": "InternalIP", "address": internal},
                                   {"type": "Hostname", "address": name}],
                     "conditions": conditions}
    return obj


def sandbox_event(pod: str, node_name: str, message: str, *, namespace: str = "default",
                  count: int = 4) -> dict[str, Any]:
    """The kubelet's Warning event for a pod sandbox that failed (reason FailedCreatePodSandBox)."""
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{pod}.17a{count:04d}", "namespace": namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod, "namespace": namespace},
        "reason": "FailedCreatePodSandBox", "type": "Warning", "count": count,
        "message": message,
        "source": {"component": "kubelet", "host": node_name},
        "reportingComponent": "kubelet", "reportingInstance": node_name,
        "firstTimestamp": "2026-11-30T09:00:00Z", "lastTimestamp": "2026-11-30T09:04:00Z",
    }


def workload_pod(name: str, node_name: str, ip: str, *, namespace: str = "default") -> dict[str, Any]:
    """A running pod on the pod network."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name.rsplit("-", 1)[0]}},
            "spec": {"nodeName": node_name, "containers": [{"name": "app", "image": "nginx:1.27"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def guard_objects(api: DoctorKubeApi, *, cert_pem: bytes, ca_pem: bytes, ready: int = 2,
                  allocate: str | None = None, mutating: bool = True,
                  namespace: str = "flannel-guard", split: bool = True, policies: tuple[str, ...] = (),
                  params: dict[str, str] | None = None) -> None:
    """flannel-guard installed as manifests/base lays it out: Deployment, webhooks, Service, slice, Secret."""
    args = ["serve", "--in-cluster", "--port", "9643", "--tls-cert", "/etc/flannel-guard/tls/tls.crt",
            "--tls-key", "/etc/flannel-guard/tls/tls.key", *(["--allocate", allocate] if allocate else [])]
    env = [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    container = {"name": "flannel-guard", "args": args, "env": env}
    api.put("deployments", {"apiVersion": "apps/v1", "kind": "Deployment",
                            "metadata": {"name": "flannel-guard", "namespace": namespace},
                            "spec": {"template": {"spec": {"containers": [container]}}}})
    bundle = base64.b64encode(ca_pem).decode()

    def hook(name: str, path: str, failure: str = "Fail") -> dict[str, Any]:
        service = {"name": "flannel-guard", "namespace": namespace, "path": path, "port": 443}
        return {"name": name, "admissionReviewVersions": ["v1"], "failurePolicy": failure,
                "sideEffects": "None", "clientConfig": {"caBundle": bundle, "service": service}}

    group = "admissionregistration.k8s.io/v1"
    node_hooks = [hook("podcidrs.nodes.flannel-guard.io", "/validate"),
                  hook("nodes.flannel-guard.io", "/validate", "Ignore")]
    if not split:  # as installed before the Node webhook was split: one Ignore webhook
        node_hooks = [hook("nodes.flannel-guard.io", "/validate", "Ignore")]
    api.put("validatingwebhookconfigurations", {
        "apiVersion": group, "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "flannel-guard"},
        "webhooks": [hook("configmaps.flannel-guard.io", "/validate"), *node_hooks]})
    if mutating:
        api.put("mutatingwebhookconfigurations", {
            "apiVersion": group, "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "flannel-guard"},
            "webhooks": [hook("nodes.mutate.flannel-guard.io", "/mutate", "Ignore")]})
    for name in policies:  # components/admission-policy, as rendered (the parts doctor reads)
        api.put("validatingadmissionpolicies", {
            "apiVersion": group, "kind": "ValidatingAdmissionPolicy", "metadata": {"name": name},
            "spec": {"failurePolicy": "Fail"}})
        api.put("validatingadmissionpolicybindings", {
            "apiVersion": group, "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"],
                     **({"paramRef": {"name": "flannel-guard-policy-params", "namespace": namespace,
                                      "parameterNotFoundAction": "Allow"}}
                        if name == "flannel-guard-node-podcidrs" else {})}})
    if params is not None:
        api.put("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": {"name": "flannel-guard-policy-params", "namespace": namespace},
                               "data": params})
    api.put("services", {"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": "flannel-guard", "namespace": namespace},
                         "spec": {"type": "ClusterIP", "ports": [{"name": "https", "port": 443}]}})
    endpoints = [{"addresses": [f"192.168.56.{11 + i}"], "nodeName": f"cp{i + 1}",
                  "conditions": {"ready": i < ready, "serving": i < ready}} for i in range(max(ready, 1))]
    api.put("endpointslices", {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                               "metadata": {"name": "flannel-guard-x7k2p", "namespace": namespace,
                                            "labels": {"kubernetes.io/service-name": "flannel-guard"}},
                               "addressType": "IPv4", "endpoints": endpoints,
                               "ports": [{"name": "https", "port": 9643, "protocol": "TCP"}]})
    api.put("secrets", {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                        "metadata": {"name": "flannel-guard-tls", "namespace": namespace},
                        "data": {"tls.crt": base64.b64encode(cert_pem).decode(), "tls.key": "",
                                 "ca.crt": bundle}})

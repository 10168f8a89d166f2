"""A loopback Kubernetes API for the ``doctor`` tests: the seed's broken cluster, pod logs, and the fixes.

:class:`DoctorKubeApi` is :class:`kube_emulator.FakeKubeApi` plus what the doctor
reads and the node watcher does not: ``GET .../pods/{name}/log`` (``tailLines``,
``previous``) and, for RBAC tests, paths that answer 403. :func:`seed_cluster`
builds the seed (``kubeadm init`` without ``--pod-network-cidr``, flannel
``Network`` 172.18.0.0/16, worker-0001 without a podCIDR, its flannel pod in
CrashLoopBackOff). :func:`apply_fix` applies one machine-readable fix of
``doctor --output json`` to the emulated objects, as an operator would by hand;
a flannel pod restarted on a node that now has a podCIDR comes up Ready, as
flannel would.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import yaml
from kube_emulator import FakeKubeApi, kcm_pod, kube_proxy_configmap, kubeadm_configmap, node

__all__ = [
    "SEED_LOG",
    "SEED_MESSAGE",
    "DoctorKubeApi",
    "apply_fix",
    "flannel_configmap",
    "flannel_pod",
    "seed_cluster",
]

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
        super()._add_routes(app)

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
        return aiohttp.web.Response(text="".join(lines), content_type="text/plain")

    # -- objects -----------------------------------------------------------------------------

    def put(self, plural: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.objects[plural, meta["namespace"], meta["name"]] = copy.deepcopy(obj)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return self.objects[plural, namespace, name]


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
    elif action == "restart-pod":
        # The DaemonSet's new pod: flannel gets its lease when the node has a podCIDR.
        pod = api.get("pods", fix["namespace"], fix["pod"])
        has_cidr = bool(api.nodes.get(pod["spec"]["nodeName"], {}).get("spec", {}).get("podCIDRs"))
        api.put("pods", flannel_pod(fix["pod"], pod["spec"]["nodeName"], ready=has_cidr,
                                    namespace=fix["namespace"]))
        api.logs.pop((fix["namespace"], fix["pod"]), None)
    else:
        raise AssertionError(f"not a machine-applicable fix: {fix}")

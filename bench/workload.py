"""What the benchmark sends: AdmissionReviews, and Nodes shaped as a kubeadm/flannel cluster stores them."""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_FLANNEL = ROOT.parent / "shared" / "fixtures" / "upstream" / "kube-flannel-current.yml"
LOCAL_FLANNEL = ROOT / "tests" / "fixtures" / "kube-flannel-cfg.yaml"


def node_cidr(i: int) -> str:
    """Node ``i``'s /24 in 10.0.0.0/8 (65,536 of them)."""
    return f"10.{(i >> 8) & 255}.{i & 255}.0/24"


def node(i: int, *, cidr: bool = True, name: str | None = None) -> dict[str, Any]:
    """A Node as the API lists it (about 3 KB of JSON): kubelet status, flannel annotations, images."""
    name = name or f"node-{i:05d}"
    ip = f"192.168.{(i >> 8) & 255}.{i & 255}"
    spec: dict[str, Any] = {}
    if cidr:
        spec = {"podCIDR": node_cidr(i), "podCIDRs": [node_cidr(i)]}
    stamp = "2026-11-20T10:00:00Z"
    conditions = [
        {"type": t, "status": "False", "reason": f"Kubelet Has Sufficient {t[:-8]}".replace(" ", ""),
         "message": f"kubelet has sufficient {t[:-8].lower()} available",
         "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
        for t in ("MemoryPressure", "DiskPressure", "PIDPressure")
    ] + [{"type": "Ready", "status": "True", "reason": "KubeletReady",
          "message": "kubelet is posting ready status", "lastHeartbeatTime": stamp,
          "lastTransitionTime": stamp}]
    images = [
        {"names": [f"registry.k8s.io/{img}@sha256:{hashlib.sha256(img.encode()).hexdigest()}",
                   f"registry.k8s.io/{img}:v1.33.0"], "sizeBytes": 30_000_000 + k}
        for k, img in enumerate(("kube-proxy", "pause", "coredns/coredns", "etcd",
                                 "flannel/flannel", "flannel/flannel-cni-plugin"))
    ]
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "uid": str(uuid.UUID(int=i + 1)), "resourceVersion": str(1000 + i),
            "creationTimestamp": stamp,
            "labels": {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
                       "kubernetes.io/os": "linux", "topology.kubernetes.io/zone": f"zone-{i % 3}"},
            "annotations": {
                "flannel.alpha.coreos.com/backend-data":
                    json.dumps({"VNI": 1, "VtepMAC": "6a:5b:4c:3d:2e:1f"}),
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/public-ip": ip,
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": spec,
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "allocatable": {"cpu": "4", "ephemeral-storage": "95001823232", "hugepages-2Mi": "0",
                            "memory": "16163984Ki", "pods": "110"},
            "capacity": {"cpu": "4", "ephemeral-storage": "103081248Ki", "hugepages-2Mi": "0",
                         "memory": "16266384Ki", "pods": "110"},
            "conditions": conditions,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": images,
            "nodeInfo": {"architecture": "amd64", "bootID": str(uuid.UUID(int=i + 7)),
                         "containerRuntimeVersion": "containerd://2.0.5", "kernelVersion": "6.8.0-60-generic",
                         "kubeProxyVersion": "", "kubeletVersion": "v1.33.1",
                         "machineID": "%032x" % (i + 11), "operatingSystem": "linux",
                         "osImage": "Ubuntu 24.04.2 LTS", "systemUUID": str(uuid.UUID(int=i + 13))},
        },
    }


def review(obj: dict[str, Any] | None, operation: str, old: dict[str, Any] | None = None) -> str:
    """An AdmissionReview v1 as kube-apiserver sends it, as JSON text."""
    subject = obj if obj is not None else old
    assert subject is not None
    kind = subject["kind"]
    meta = subject["metadata"]
    resource = {"ConfigMap": "configmaps", "Node": "nodes"}[kind]
    gvk = {"group": "", "version": "v1", "kind": kind}
    gvr = {"group": "", "version": "v1", "resource": resource}
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()), "kind": gvk, "resource": gvr, "requestKind": gvk,
        "requestResource": gvr, "name": meta["name"], "operation": operation,
        "userInfo": {"username": "system:node:" + meta["name"] if kind == "Node" else "kubernetes-admin",
                     "groups": ["system:nodes", "system:authenticated"]},
        "object": obj, "oldObject": old, "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1",
                    "kind": "CreateOptions" if operation == "CREATE" else "UpdateOptions"},
    }
    if kind != "Node":
        request["namespace"] = meta.get("namespace")
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})


def flannel_configmap() -> tuple[dict[str, Any], str]:
    """The ``kube-flannel-cfg`` ConfigMap of the real kube-flannel.yml, and which file it came from."""
    path = UPSTREAM_FLANNEL if UPSTREAM_FLANNEL.exists() else LOCAL_FLANNEL
    for doc in yaml.safe_load_all(path.read_text()):
        if isinstance(doc, dict) and doc.get("kind") == "ConfigMap" and \
                doc["metadata"]["name"] == "kube-flannel-cfg":
            return doc, str(path)
    raise SystemExit(f"no kube-flannel-cfg ConfigMap in {path}")


def configmap_reviews(n: int) -> list[str]:
    cm, _ = flannel_configmap()
    return [review(copy.deepcopy(cm), "CREATE") for _ in range(n)]


def node_update_reviews(nodes: int, n: int) -> list[str]:
    """UPDATEs that change a label of an indexed node (podCIDR unchanged): the overlap query runs."""
    out = []
    for k in range(n):
        i = (k * 7919) % nodes if nodes else 0
        old = node(i)
        new = copy.deepcopy(old)
        new["metadata"]["labels"]["bench/touched"] = str(k)
        out.append(review(new, "UPDATE", old))
    return out


def node_create_reviews(prefix: str, n: int) -> list[str]:
    """CREATEs of new Nodes without a podCIDR (the mutating webhook allocates one)."""
    return [review(node(0, cidr=False, name=f"{prefix}-{k:05d}"), "CREATE") for k in range(n)]

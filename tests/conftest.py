"""Shared fixtures: a ClusterView builder and AdmissionReview builders shaped as kube-apiserver sends them."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from webhook.core.cidr import parse_cidr, parse_cidr_list
from webhook.core.nodeindex import NodeCidrIndex
from webhook.core.rules import ClusterView

FIXTURES = Path(__file__).parent / "fixtures"


@contextlib.contextmanager
def served_in_thread(server: Any) -> Iterator[None]:
    """Run a server built by ``webhook.service.server.build_server`` on a loop of its own, for the block."""
    server.config.install_signal_handlers = False
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.01)
    assert server.started, "server did not start"
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def make_view(cidr: str | None = "10.244.0.0/16", nodes: dict[str, list[str]] | None = None,
              mask_v4: int = 24, mask_v6: int = 64, source: str = "test") -> ClusterView:
    index = NodeCidrIndex()
    for name, cidrs in (nodes or {}).items():
        index.set(name, [parse_cidr(c).network for c in cidrs])
    return ClusterView(cluster_cidr=parse_cidr_list(cidr) if cidr else None, cidr_source=source,
                       nodes=index, mask_v4=mask_v4, mask_v6=mask_v6)


def net_conf(**fields: Any) -> str:
    doc: dict[str, Any] = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
    doc.update(fields)
    return json.dumps({k: v for k, v in doc.items() if v is not None}, indent=2)


def flannel_configmap(text: str | None, namespace: str = "kube-flannel",
                      name: str = "kube-flannel-cfg", **extra_data: str) -> dict[str, Any]:
    data: dict[str, str] = {
        "cni-conf.json": json.dumps({"name": "cbr0", "cniVersion": "0.3.1", "plugins": [
            {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]}),
    }
    if text is not None:
        data["net-conf.json"] = text
    data.update(extra_data)
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app": "flannel", "tier": "node"}},
        "data": data,
    }


def node(name: str, *cidrs: str, podcidr: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if cidrs:
        spec["podCIDR"] = podcidr if podcidr is not None else cidrs[0]
        spec["podCIDRs"] = list(cidrs)
    elif podcidr:
        spec["podCIDR"] = podcidr
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": spec}


def review(obj: dict[str, Any] | None, operation: str = "CREATE",
           old: dict[str, Any] | None = None, dry_run: bool = False) -> dict[str, Any]:
    """An AdmissionReview v1 as kube-apiserver sends it (fields of admission/v1 AdmissionRequest)."""
    subject = obj if obj is not None else old
    assert subject is not None
    kind = subject["kind"]
    meta = subject.get("metadata", {})
    namespaced = kind != "Node"
    resource = {"ConfigMap": "configmaps", "Node": "nodes"}.get(kind, kind.lower() + "s")
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "", "version": "v1", "kind": kind},
        "resource": {"group": "", "version": "v1", "resource": resource},
        "requestKind": {"group": "", "version": "v1", "kind": kind},
        "requestResource": {"group": "", "version": "v1", "resource": resource},
        "name": meta.get("name"),
        "operation": operation,
        "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
        "object": copy.deepcopy(obj),
        "oldObject": copy.deepcopy(old),
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1",
                    "kind": {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions",
                             "DELETE": "DeleteOptions"}.get(operation, "CreateOptions"),
                    "fieldManager": "kubectl-client-side-apply"},
    }
    if namespaced:
        request["namespace"] = meta.get("namespace")
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


@pytest.fixture
def view() -> ClusterView:
    return make_view()

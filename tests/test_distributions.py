"""k3s and RKE2 clusters as they present themselves, on the loopback API, with a served replica.

Neither runs kube-controller-manager as a pod nor has a kubeadm-config: the cluster-cidr is on the
server Nodes' node-args (tests/fixtures/k3s-server-node.yaml, rke2-server-node.yaml). The replica
runs with the shipped arguments (no --cluster-cidr); the test plays the API server.
"""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml
from conftest import node, review
from kube_emulator import ApiThread, client_for, kubeconfig_file
from server_process import serve

from webhook.kube.cluster import discover

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> dict:
    return yaml.safe_load((FIXTURES / name).read_text())


def wait_until(check: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def post(url: str, ca: Path, body: dict) -> dict:
    async def go() -> dict:
        ctx = ssl.create_default_context(cafile=str(ca))
        async with httpx.AsyncClient(verify=ctx, timeout=60) as c:
            r = await c.post(f"{url}/validate", json=body)
            assert r.status_code == 200, r.text
            return r.json()["response"]
    return asyncio.run(go())


def test_k3s_discovery_reads_the_server_node_args():
    api = ApiThread()
    try:
        api.call(api.api.put_node(fixture("k3s-server-node.yaml")))
        res = asyncio.run(discover(client_for(api.api.url), None))
        assert [str(n) for n in res.networks] == ["10.52.0.0/16"]
        assert res.effective.origin == "k3s server node k3s-cp-0 k3s.io/node-args --cluster-cidr"
        assert (res.mask_v4, [str(n) for n in res.service.networks]) == (25, ["10.53.0.0/16"])
        assert res.allocate_node_cidrs is True and res.agree
    finally:
        api.close()


def test_rke2_discovery_takes_the_default_when_the_flag_is_absent():
    api = ApiThread()
    try:
        api.call(api.api.put_node(fixture("rke2-server-node.yaml")))
        res = asyncio.run(discover(client_for(api.api.url), None))
        assert [str(n) for n in res.networks] == ["10.42.0.0/16"] and res.mask_v4 == 24
        assert res.effective.origin.startswith("rke2 server node rke2-cp-0: rke2's default cluster-cidr")
    finally:
        api.close()


def test_a_k3s_node_outside_the_range_is_refused_naming_it_and_a_second_server_is_followed(tmp_path):
    api = ApiThread()
    server = fixture("k3s-server-node.yaml")
    try:
        api.call(api.api.put_node(server))
        cfg = kubeconfig_file(tmp_path / "kubeconfig", api.api.url)
        with serve(tmp_path, "--kubeconfig", str(cfg), "--shutdown-delay", "0", cluster_cidr=None) as replica:
            ca = tmp_path / "ca.crt"
            resp = post(replica.url, ca, review(node("k3s-agent-1", "10.42.1.0/24")))
            assert resp["allowed"] is False
            message = resp["status"]["message"]
            assert "10.42.1.0/24" in message and "10.52.0.0/16" in message, message
            # of the node mask the server's kube-controller-manager-arg gives
            assert post(replica.url, ca, review(node("k3s-agent-2", "10.52.1.0/24")))["allowed"] is False
            assert post(replica.url, ca, review(node("k3s-agent-3", "10.52.1.0/25")))["allowed"] is True
            # A second server joins with another cluster-cidr: a disagreement, said in every answer.
            other = copy.deepcopy(server)
            other["metadata"]["name"] = "k3s-cp-1"
            other["metadata"]["annotations"]["k3s.io/node-args"] = json.dumps(
                ["server", "--server", "https://k3s-cp-0:6443", "--token", "********"])
            other["spec"] = {}
            api.call(api.api.put_node(other))

            def disagreement() -> list[str]:
                r = post(replica.url, ca, review(node("k3s-agent-4", "10.52.2.0/25")))
                return [w for w in r.get("warnings", []) if "cluster-cidr disagreement" in w]
            wait_until(disagreement, "the second server's default 10.42.0.0/16 reported", timeout=10)
            assert any("k3s-cp-1" in w and "10.42.0.0/16" in w for w in disagreement())
    finally:
        api.close()


def test_rke2_canal_config_with_another_network_is_refused_naming_the_range(tmp_path):
    api = ApiThread()
    try:
        api.call(api.api.put_node(fixture("rke2-server-node.yaml")))
        cfg = kubeconfig_file(tmp_path / "kubeconfig", api.api.url)
        with serve(tmp_path, "--kubeconfig", str(cfg), "--shutdown-delay", "0", cluster_cidr=None) as replica:
            ca = tmp_path / "ca.crt"
            canal = fixture("rke2-canal-config.yaml")
            assert post(replica.url, ca, review(canal))["allowed"] is True  # the chart's, as RKE2 renders it
            wrong = copy.deepcopy(canal)
            text = wrong["data"]["net-conf.json"]
            wrong["data"]["net-conf.json"] = text.replace("10.42.0.0/16", "10.244.0.0/16")
            resp = post(replica.url, ca, review(wrong, "UPDATE", canal))
            assert resp["allowed"] is False
            message = resp["status"]["message"]
            assert "flannel Network 10.244.0.0/16 does not match the cluster-cidr 10.42.0.0/16" in message
            assert "rke2 server node rke2-cp-0" in message and "/etc/rancher/rke2/config.yaml" in message
            # and deleting it takes the pod network down as kube-flannel-cfg's deletion does
            assert post(replica.url, ca, review(None, "DELETE", canal))["allowed"] is False
    finally:
        api.close()


def test_the_flannel_configmaps_decide_in_one_order():
    from webhook.core.constants import FLANNEL_CONFIGMAPS
    from webhook.kube.sources import guarded_order

    assert guarded_order(reversed(FLANNEL_CONFIGMAPS)) == list(FLANNEL_CONFIGMAPS)
    assert guarded_order([("kube-system", "mine"), *FLANNEL_CONFIGMAPS])[-1] == ("kube-system", "mine")


def test_check_judges_the_canal_configmap_in_a_manifest(capsys):
    from webhook.cli import main

    path = str(FIXTURES / "rke2-canal-config.yaml")
    assert main(["check", path, "--cluster-cidr", "10.42.0.0/16"]) == 0
    assert main(["check", path, "--cluster-cidr", "10.244.0.0/16"]) == 1
    assert "FAIL  ConfigMap kube-system/rke2-canal-config" in capsys.readouterr().out


def doctor(*objects: dict):
    from webhook.doctor import diagnose, gather

    api = ApiThread()
    try:
        for obj in objects:
            if obj["kind"] == "Node":
                api.call(api.api.put_node(obj))
            else:
                api.call(api.api.put_object({"ConfigMap": "configmaps", "Pod": "pods"}[obj["kind"]], obj))
        return diagnose(asyncio.run(gather(client_for(api.api.url), timeout=5.0)))
    finally:
        api.close()


def test_doctor_on_k3s_finds_the_cluster_cidr_and_knows_flannel_is_embedded():
    report = doctor(fixture("k3s-server-node.yaml"))
    assert [f.code for f in report.findings] == []
    notes = "\n".join(report.notes)
    assert "k3s embeds flannel: its net-conf.json is a file on each node" in notes
    assert "no flannel pods found" not in notes and "k3s runs flannel inside the k3s process" in notes
    assert "kube-controller-manager runs inside k3s" in notes and "allocates node CIDRs" in notes
    # The allocation line reads the embedded kube-controller-manager's flags, not "no pod found".
    from webhook.doctor.text_report import render_text

    assert report.controller_manager_found and report.allocate_node_cidrs is True
    assert "kube-controller-manager allocates node CIDRs: yes" in render_text(report)


def test_doctor_on_two_k3s_servers_that_disagree_names_the_config_file():
    first = fixture("k3s-server-node.yaml")
    second = copy.deepcopy(first)
    second["metadata"]["name"] = "k3s-cp-1"
    args = ["server", "--cluster-cidr", "10.60.0.0/16"]
    second["metadata"]["annotations"]["k3s.io/node-args"] = json.dumps(args)
    second["spec"] = {}
    report = doctor(first, second)
    (f,) = [f for f in report.findings if f.code == "ClusterCIDRDisagreement"]
    assert "k3s server k3s-cp-1" in f.summary and "10.60.0.0/16" in f.summary
    assert "cluster-cidr: 10.52.0.0/16 in /etc/rancher/k3s/config.yaml" in f.fixes[0].text


def test_doctor_on_rke2_judges_rke2_canal_config_and_sees_the_canal_pods():
    canal = fixture("rke2-canal-config.yaml")
    canal["data"]["net-conf.json"] = canal["data"]["net-conf.json"].replace("10.42.0.0/16", "10.244.0.0/16")
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "rke2-canal-x7k2p", "namespace": "kube-system",
                        "labels": {"k8s-app": "canal"}},
           "spec": {"nodeName": "rke2-cp-0",
                    "containers": [{"name": "calico-node"}, {"name": "kube-flannel"}]},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    report = doctor(fixture("rke2-server-node.yaml"), canal, pod)
    (f,) = [f for f in report.findings if f.code == "NetworkMismatch"]
    assert "rke2-canal-config" in f.subject and "10.42.0.0/16" in f.summary
    assert "/etc/rancher/rke2/config.yaml" in f.fixes[0].text and "kubectl" not in f.fixes[0].text
    assert "no flannel pods found" not in "\n".join(report.notes)

"""``doctor``'s findings for what flannel operators hit, each on the loopback API from real-shaped objects.

Every scenario serves objects as flannel, the kubelet and kubeadm write them
(:mod:`doctor_cluster`) on 127.0.0.1, lets :func:`webhook.doctor.gather` read
them over HTTP and checks the finding, its wording as a suspect where only the
host can tell, and its fix. The quoted strings are upstream's; each builder or
section cites the file they come from.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from doctor_cluster import (
    CNI_NOT_INITIALIZED,
    DoctorKubeApi,
    apply_fix,
    flannel_configmap,
    flannel_node,
    flannel_pod,
    guard_objects,
    sandbox_event,
    workload_pod,
)
from kube_emulator import client_for, kcm_pod, kube_proxy_configmap, kubeadm_configmap, kubeconfig_file

from webhook import doctor
from webhook.core.rules.findings import Severity
from webhook.doctor import DoctorFinding, Report, diagnose, gather
from webhook.doctor.facts import ClusterFacts
from webhook.doctor.klog import known_lines, last_error, trim
from webhook.doctor.rank import rank_findings
from webhook.service import certs

T = TypeVar("T")
V4 = "10.244.0.0/16"
KLOG = "E1130 09:00:01.123456       1 "  # klog's header, as flannel's log lines start
#: The kubelet's event text for a failed sandbox, before the CNI plugin's error.
SANDBOX = "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to setup network for sandbox"
#: flannel main.go, when /proc/sys/net/bridge/bridge-nf-call-iptables is missing.
BR_NETFILTER = ("Failed to check br_netfilter: stat /proc/sys/net/bridge/bridge-nf-call-iptables:"
                " no such file or directory")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def healthy_control_plane(api: DoctorKubeApi, cidr: str = V4, *, proxy_mode: str = "") -> None:
    """kubeadm with podSubnet, kube-controller-manager allocating, kube-proxy, flannel's ConfigMap."""
    api.put("pods", kcm_pod(cluster_cidr=cidr))
    api.put("configmaps", kubeadm_configmap("v1beta3", pod_subnet=cidr))
    proxy = kube_proxy_configmap(cidr)
    proxy["data"]["config.conf"] = proxy["data"]["config.conf"].replace('mode: ""', f'mode: "{proxy_mode}"')
    api.put("configmaps", proxy)
    api.put("configmaps", flannel_configmap(cidr.split(",")[0]))


async def read(api: DoctorKubeApi, **kw: Any) -> ClusterFacts:
    return await gather(client_for(api.url), timeout=5.0, **kw)


def scenario(build: Callable[[DoctorKubeApi], Awaitable[None]], **kw: Any) -> tuple[Report, DoctorKubeApi]:
    async def go() -> tuple[Report, DoctorKubeApi]:
        async with DoctorKubeApi() as api:
            await build(api)
            facts = await read(api, **kw)
            return diagnose(facts), api

    return run(go())


def only(report: Report, code: str) -> DoctorFinding:
    found = [f for f in report.findings if f.code == code]
    assert len(found) == 1, [f.code for f in report.findings]
    return found[0]


def codes(report: Report) -> set[str]:
    return {f.code for f in report.findings}


# --- pure helpers ------------------------------------------------------------------------------


def test_klog_headers_are_trimmed_from_quoted_lines() -> None:
    """klog's ``Lmmdd hh:mm:ss.uuuuuu threadid file:line]`` header (klog.go formatHeader) is dropped."""
    assert trim(f"{KLOG}main.go:291] Error registering network: boom") == "Error registering network: boom"
    assert trim("I0218 06:23:22.9 1 kube.go:120] Waiting 10m0s") == "Waiting 10m0s"
    assert trim("plain line without a header") == "plain line without a header"
    interface = "Using interface with name eth1 and address 192.168.56.11"
    text = (f"I1130 09:00:00.000001       1 match.go:269] {interface}\n"
            f"{KLOG}main.go:292] {BR_NETFILTER}\nI1130 09:00:02.0 1 main.go:9] Stopping\n")
    assert last_error(text) == BR_NETFILTER
    assert known_lines(text) == (BR_NETFILTER, interface)


def test_the_root_cause_is_chosen_by_rank_not_by_order() -> None:
    """The same findings in any order: the cluster-wide error is the root cause, symptoms follow it."""
    pod = DoctorFinding(Severity.ERROR, "FlannelPodNotReady", "pod p", "s", caused_by="NodeWithoutPodCIDR")
    node = DoctorFinding(Severity.ERROR, "NodeWithoutPodCIDR", "node n", "s", caused_by="NoClusterCIDR")
    warn = DoctorFinding(Severity.WARNING, "NFTablesMismatch", "cm", "s")
    root = DoctorFinding(Severity.ERROR, "NoClusterCIDR", "cluster-cidr", "s")
    for order in ([pod, node, warn, root], [root, warn, node, pod], [warn, pod, root, node]):
        ranked = rank_findings(order)
        # What the failing flannel's error leads to (its node, that node's cause) first, then by rank.
        assert [f.code for f in ranked] == ["NoClusterCIDR", "NodeWithoutPodCIDR", "NFTablesMismatch",
                                            "FlannelPodNotReady"]
        assert [f.root_cause for f in ranked] == [True, False, False, False]
    # A symptom whose cause is absent does not point at it.
    assert rank_findings([pod])[0].caused_by == ""


# --- pods on two nodes cannot talk: the address flannel announces ---------------------------------


def test_nodes_sharing_vagrants_nat_address_are_one_finding_with_a_fix_per_node() -> None:
    """flannel#98/#1192: every VM's eth0 is 10.0.2.15; flannel announces it as each node's public-ip."""
    interface = ("I1130 09:00:00.512201       1 match.go:269] Using interface with name eth0"
                 " and address 10.0.2.15")

    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        for i, name in enumerate(("cp1", "w1", "w2")):
            await api.put_node(flannel_node(name, f"10.244.{i}.0/24", public_ip="10.0.2.15",
                                            internal_ip=f"192.168.56.{11 + i}"))
            api.put("pods", flannel_pod(f"kube-flannel-ds-{name}", name))
            api.logs["kube-flannel", f"kube-flannel-ds-{name}"] = (
                "I1130 09:00:00.100000       1 main.go:212] CLI flags config: {kubeSubnetMgr:true}\n"
                f"{interface}\nI1130 09:00:01.000000       1 main.go:452] Running backend.\n")

    report, api = scenario(build)
    f = only(report, "PublicIPShared")
    assert f.severity is Severity.ERROR and f.root_cause
    assert f.summary.startswith("3 nodes share flannel's public-ip 10.0.2.15 (cp1, w1, w2)")
    assert f.subjects == ("node cp1", "node w1", "node w2")
    assert "cp1: Using interface with name eth0 and address 10.0.2.15" in f.detail
    assert "match.go:269]" not in f.detail
    annotate = [x.to_json() for x in f.fixes if x.action == "annotate-node"]
    assert [(a["node"], a["value"]) for a in annotate] == [
        ("cp1", "192.168.56.11"), ("w1", "192.168.56.12"), ("w2", "192.168.56.13")]
    assert all(a["annotation"] == "flannel.alpha.coreos.com/public-ip-overwrite" for a in annotate)
    assert "--iface" in f.fixes[0].text
    # Ready pods' logs are read only for the nodes in question, from the head (start-up lines).
    logs = [r for r in api.requests if r.path.endswith("/log")]
    assert len(logs) == 3 and all(r.query.get("limitBytes") == "65536" for r in logs)


def test_a_public_ip_that_is_none_of_the_nodes_addresses_is_a_suspect_and_an_overwrite_a_note() -> None:
    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        await api.put_node(flannel_node("cp1", "10.244.0.0/24", internal_ip="192.168.56.11"))
        await api.put_node(flannel_node("w1", "10.244.1.0/24", public_ip="203.0.113.7",
                                        internal_ip="192.168.56.12"))
        api.put("pods", flannel_pod("kube-flannel-ds-w1", "w1"))
        api.logs["kube-flannel", "kube-flannel-ds-w1"] = (
            "I1130 09:00:00.512201       1 match.go:269] Using interface with name eth2 and address"
            " 203.0.113.7\n")
        manual = flannel_node("w2", "10.244.2.0/24", public_ip="198.51.100.9", internal_ip="192.168.56.13")
        manual["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip-overwrite"] = "198.51.100.9"
        await api.put_node(manual)

    report, _ = scenario(build)
    f = only(report, "PublicIPNotNodeAddress")
    assert f.severity is Severity.WARNING and f.subject == "node w1"
    assert f.summary.startswith("suspect: flannel on node w1 announces public-ip 203.0.113.7")
    assert "UDP 8472" in f.detail
    assert "flannel's log: w1: Using interface with name eth2 and address 203.0.113.7" in f.detail
    note = "node w2: flannel.alpha.coreos.com/public-ip-overwrite=198.51.100.9"
    assert any(note in n for n in report.notes)


# --- backend and VNI -----------------------------------------------------------------------------


def test_a_node_left_on_another_backend_is_named() -> None:
    """flannel#517: one node still announces host-gw while net-conf.json says vxlan."""
    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        await api.put_node(flannel_node("cp1", "10.244.0.0/24"))
        await api.put_node(flannel_node("w1", "10.244.1.0/24", backend="host-gw"))

    report, _ = scenario(build)
    f = only(report, "BackendMismatch")
    assert "host-gw on w1" in f.summary and "vxlan on cp1" in f.summary
    assert "net-conf.json says vxlan" in f.summary
    assert f.subjects == ("node w1",)
    assert "rollout restart daemonset kube-flannel-ds" in f.fixes[0].text


def test_a_windows_node_with_vni_1_is_refused_and_the_vnis_differ() -> None:
    """flannel's vxlan_windows.go: VNI must be >= 4096 on Windows (k3s#9295, flannel#765)."""
    conf = json.dumps({"Network": V4, "Backend": {"Type": "vxlan", "VNI": 4096}})

    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        api.put("configmaps", flannel_configmap(net_conf=conf))
        await api.put_node(flannel_node("cp1", "10.244.0.0/24", vni=4096))
        await api.put_node(flannel_node("win1", "10.244.1.0/24", vni=1, os="windows"))

    report, _ = scenario(build)
    assert only(report, "WindowsVNITooLow").subject == "node win1"
    vni = only(report, "VNIMismatch")
    assert "VNI 1 on win1" in vni.summary and "VNI 4096 on cp1" in vni.summary
    assert "net-conf.json says 4096" in vni.summary


# --- /run/flannel/subnet.env missing, br_netfilter, kube-proxy ---------------------------------------


def test_sandboxes_without_subnet_env_follow_from_flannel_exiting_on_br_netfilter() -> None:
    """flannel#2253/#2068: flannel exits on a node without br_netfilter; its pods' sandboxes fail."""
    old = (f'{SANDBOX} "3f2a9c": plugin type="flannel" failed (add): loadFlannelSubnetEnv failed: open'
           ' /run/flannel/subnet.env: no such file or directory')
    new = (f'{SANDBOX} "8be1d0": plugin type="flannel" failed (add): failed to load flannel'
           " 'subnet.env' file: open /run/flannel/subnet.env: no such file or directory. Check the flannel"
           " pod log for this node.")

    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        await api.put_node(flannel_node("cp1", "10.244.0.0/24"))
        await api.put_node(flannel_node("w2", "10.244.1.0/24", flannel_ran=False))
        api.put("pods", flannel_pod("kube-flannel-ds-cp1", "cp1"))
        api.put("pods", flannel_pod("kube-flannel-ds-w2", "w2", ready=False, restarts=6))
        api.logs["kube-flannel", "kube-flannel-ds-w2"] = (
            "I1130 09:00:00.100000       1 main.go:212] CLI flags config: {kubeSubnetMgr:true}\n"
            f"{KLOG}main.go:292] {BR_NETFILTER}\n")
        api.put("events", sandbox_event("web-7d4b9-x2x", "w2", old))
        api.put("events", sandbox_event("db-0", "w2", new, namespace="shop"))

    report, api = scenario(build)
    root = report.root_cause
    assert root is not None and root.code == "BrNetfilterMissing"
    assert "modprobe br_netfilter" in root.fixes[0].text and root.fixes[0].params == {"nodes": ["w2"]}
    assert root.detail.startswith("flannel's log: Failed to check br_netfilter")
    pod = only(report, "FlannelPodNotReady")
    assert pod.caused_by == "BrNetfilterMissing" and pod.subject == "pod kube-flannel/kube-flannel-ds-w2"
    env = only(report, "SubnetEnvMissing")
    assert env.subjects == ("node w2",) and env.caused_by == "FlannelPodNotReady"
    assert "loadFlannelSubnetEnv failed" in env.detail or "failed to load flannel 'subnet.env'" in env.detail
    events = [r for r in api.requests if r.path == "/api/v1/events"]
    assert events and events[0].query["fieldSelector"] == "reason=FailedCreatePodSandBox"


def test_flannel_timing_out_on_the_service_ip_and_nftables_against_kube_proxy() -> None:
    """flannel#1409/#1702: 'dial tcp 10.96.0.1:443: i/o timeout'; EnableNFTables vs kube-proxy's mode."""
    line = (f"{KLOG}main.go:235] Failed to create SubnetManager: error retrieving pod spec for"
            " 'kube-flannel/kube-flannel-ds-w1': Get \"https://10.96.0.1:443/api/v1/namespaces/kube-flannel/pods/"
            "kube-flannel-ds-w1\": dial tcp 10.96.0.1:443: i/o timeout")

    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api, proxy_mode="nftables")
        await api.put_node(flannel_node("cp1", "10.244.0.0/24"))
        await api.put_node(flannel_node("w1", "10.244.1.0/24", flannel_ran=False))
        api.put("pods", flannel_pod("kube-flannel-ds-w1", "w1", ready=False, restarts=2))
        api.logs["kube-flannel", "kube-flannel-ds-w1"] = line + "\n"

    report, _ = scenario(build)
    f = only(report, "ApiServiceUnreachable")
    assert f.summary.startswith("suspect: flannel on w1 cannot reach the kube-apiserver")
    assert "dial tcp 10.96.0.1:443: i/o timeout" in f.detail and "main.go:235]" not in f.detail
    nft = only(report, "NFTablesMismatch")
    assert "EnableNFTables is false but kube-proxy runs in nftables mode" in nft.summary
    assert '"EnableNFTables": true' in nft.fixes[0].text


# --- CNI plugins missing -------------------------------------------------------------------------


def test_a_node_notready_for_cni_with_flannel_running_and_a_missing_plugin() -> None:
    """flannel#1730/#2301: the kubelet's Ready=False NetworkPluginNotReady; 'failed to find plugin'."""
    plugin = (f'{SANDBOX} "a1b2": plugin type="flannel" failed (add): failed to find plugin "bridge" in path'
              ' [/opt/cni/bin]')

    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        await api.put_node(flannel_node("cp1", "10.244.0.0/24"))
        await api.put_node(flannel_node("w1", "10.244.1.0/24", ready_message=CNI_NOT_INITIALIZED))
        api.put("pods", flannel_pod("kube-flannel-ds-w1", "w1"))
        api.put("events", sandbox_event("coredns-5d78c-abc", "w1", plugin, namespace="kube-system"))

    report, _ = scenario(build)
    cni = only(report, "CNINotReady")
    assert cni.subjects == ("node w1",) and CNI_NOT_INITIALIZED in cni.detail
    assert cni.fixes[0].action == "host" and "/opt/cni/bin" in cni.fixes[0].text
    missing = only(report, "CNIPluginMissing")
    assert missing.fixes[0].params == {"nodes": ["w1"], "plugins": ["bridge"]}


def test_a_node_notready_without_a_flannel_pod_points_at_the_daemonset() -> None:
    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        await api.put_node(flannel_node("cp1", "10.244.0.0/24"))
        await api.put_node(flannel_node("gpu1", "10.244.1.0/24", flannel_ran=False,
                                        ready_message=CNI_NOT_INITIALIZED))
        api.put("pods", flannel_pod("kube-flannel-ds-cp1", "cp1"))

    report, _ = scenario(build)
    cni = only(report, "CNINotReady")
    assert "No flannel pod runs there" in cni.detail and "tolerations" in cni.fixes[0].text


def test_network_unavailable_true_means_flannel_never_came_up() -> None:
    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        await api.put_node(flannel_node("cp1", "10.244.0.0/24"))
        await api.put_node(flannel_node("w1", "10.244.1.0/24", network_unavailable=True))

    report, _ = scenario(build)
    assert only(report, "FlannelNotUp").subjects == ("node w1",)


# --- stale state after a rejoin ------------------------------------------------------------------


def test_a_rejoined_node_with_an_old_cni0_and_pods_outside_its_podcidr() -> None:
    """flannel#1060/#883: w1 rejoined with 10.244.5.0/24; cni0 and its pods still have 10.244.1.x."""
    bridge = (f'{SANDBOX} "c0ffee": plugin type="flannel" failed (add): plugin type="bridge" failed (add):'
              ' failed to set bridge addr: "cni0" already has an IP address different from'
              ' 10.244.5.1/24')
    ipam = (f'{SANDBOX} "bead": plugin type="flannel" failed (add): failed to allocate for range 0:'
            ' no IP addresses available in range set: 10.244.6.1-10.244.6.254')

    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        await api.put_node(flannel_node("cp1", "10.244.0.0/24"))
        await api.put_node(flannel_node("w1", "10.244.5.0/24"))
        await api.put_node(flannel_node("w2", "10.244.6.0/24"))
        api.put("pods", workload_pod("web-1", "w1", "10.244.1.7"))
        api.put("pods", workload_pod("web-2", "w1", "10.244.1.8"))
        api.put("pods", workload_pod("api-1", "w1", "10.244.5.4"))
        api.put("pods", workload_pod("api-2", "cp1", "10.244.0.9"))
        api.put("events", sandbox_event("web-3", "w1", bridge))
        api.put("events", sandbox_event("job-1", "w2", ipam))

    report, api = scenario(build)
    stale = only(report, "PodIPOutsideNodeCIDR")
    assert stale.subject == "node w1"
    assert "2 pod(s) on node w1 have IPs outside its podCIDR 10.244.5.0/24" in stale.summary
    assert stale.fixes[0].params["pods"] == ["default/web-1 (10.244.1.7)", "default/web-2 (10.244.1.8)"]
    assert "ip link delete cni0" in only(report, "StaleCNIBridge").fixes[0].text
    assert only(report, "IPAMExhausted").subjects == ("node w2",)
    listed = [r for r in api.requests if r.path == "/api/v1/pods"]
    assert listed[0].query["fieldSelector"] == "status.phase=Running" and listed[0].query["limit"] == "500"


def test_workload_pods_are_read_page_by_page() -> None:
    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        await api.put_node(flannel_node("w1", "10.244.5.0/24"))
        for i in range(1203):
            api.put("pods", workload_pod(f"p-{i}", "w1", f"10.244.1.{i % 250 + 1}"))

    report, api = scenario(build)
    assert "1203 pod(s) on node w1" in only(report, "PodIPOutsideNodeCIDR").summary
    pages = [r.query.get("continue") for r in api.requests if r.path == "/api/v1/pods"]
    assert pages == [None, "500", "1000"]


# --- dual-stack and the service range ----------------------------------------------------------------


def test_a_dual_stack_cluster_cidr_with_ipv6_first() -> None:
    """flannel#1629/#1985: kube-controller-manager --cluster-cidr=fd00:10:244::/56,10.244.0.0/16."""
    dual = "fd00:10:244::/56,10.244.0.0/16"
    conf = json.dumps({"Network": V4, "IPv6Network": "fd00:10:244::/56", "EnableIPv6": True,
                       "Backend": {"Type": "vxlan"}})

    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api, dual)
        api.put("configmaps", flannel_configmap(net_conf=conf))
        await api.put_node(flannel_node("cp1", "fd00:10:244::/64", "10.244.0.0/24"))

    report, _ = scenario(build)
    f = only(report, "IPv6First")
    assert f.severity is Severity.WARNING and "lists IPv6 first" in f.summary


def test_a_servicecidr_object_inside_the_pod_network() -> None:
    """flannel#660/#1784 with Kubernetes 1.33's ServiceCIDR objects (networking.k8s.io/v1)."""
    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        await api.put_node(flannel_node("cp1", "10.244.0.0/24"))
        api.put("servicecidrs", {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
                                 "metadata": {"name": "extra"}, "spec": {"cidrs": ["10.244.128.0/20"]}})

    report, _ = scenario(build)
    f = only(report, "PodServiceOverlap")
    assert "10.244.0.0/16 overlaps the service range 10.244.128.0/20 (ServiceCIDR objects)" in f.summary


# --- grouping ------------------------------------------------------------------------------------------


def test_findings_that_share_one_cause_are_grouped_and_the_fixes_make_the_cluster_healthy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Six workers without a podCIDR, six crashing flannel pods: one node finding, one restart."""
    no_cidr = (f'{KLOG}main.go:291] Error registering network: failed to acquire lease: node "%s" pod cidr'
               " not assigned\n")
    workers = [f"worker-{i:04d}" for i in range(1, 7)]

    async def go() -> None:
        async with DoctorKubeApi() as api:
            api.put("pods", kcm_pod(cluster_cidr=None, allocate=False))
            api.put("configmaps", kubeadm_configmap("v1beta3", pod_subnet=None))
            api.put("configmaps", flannel_configmap("172.18.0.0/16"))
            await api.put_node(flannel_node("cp1", "172.18.0.0/24"))
            api.put("pods", flannel_pod("kube-flannel-ds-cp1", "cp1"))
            for w in workers:
                await api.put_node(flannel_node(w, flannel_ran=False))
                api.put("pods", flannel_pod(f"kube-flannel-ds-{w}", w, ready=False, restarts=4))
                api.logs["kube-flannel", f"kube-flannel-ds-{w}"] = no_cidr % w
            config = str(kubeconfig_file(tmp_path / "kubeconfig", api.url))
            code = await asyncio.to_thread(doctor.main, ["doctor", "--kubeconfig", config, "-o", "json"])
            doc = json.loads(capsys.readouterr().out)
            assert code == 1
            nodes = [f for f in doc["findings"] if f["code"] == "NodeWithoutPodCIDR"]
            assert len(nodes) == 1 and nodes[0]["subjects"] == [f"node {w}" for w in workers]
            assert nodes[0]["summary"].startswith("6 nodes have no podCIDR (worker-0001, worker-0002,")
            patches = [x for x in nodes[0]["fixes"] if x["action"] == "patch-node"]
            assert len(patches) == 6
            assert all(p["alternativeTo"] == "set-controller-manager-flags" for p in patches)
            assert len({p["patch"]["spec"]["podCIDR"] for p in patches}) == 6
            pods = [f for f in doc["findings"] if f["code"] == "FlannelPodNotReady"]
            assert len(pods) == 1 and pods[0]["causedBy"] == "NodeWithoutPodCIDR"
            (restart,) = pods[0]["fixes"]
            assert restart["action"] == "restart-pods" and len(restart["pods"]) == 6
            assert "delete pod -l app=flannel" in restart["text"]

            code = await asyncio.to_thread(doctor.main, ["doctor", "--kubeconfig", config])
            text = capsys.readouterr().out
            assert text.count("kubectl -n kube-flannel delete pod") == 1
            assert text.count("       or:  kubectl patch node worker-") == 6

            for fix in doc["fixes"]:
                await apply_fix(api, fix)
            code = await asyncio.to_thread(doctor.main, ["doctor", "--kubeconfig", config])
            out = capsys.readouterr().out
            assert code == 0, out

    run(go())


# --- --flannel-configmap -------------------------------------------------------------------------------


def test_flannel_configmap_is_honoured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """flannel in its own namespace: doctor reads that ConfigMap and its pods, not the defaults."""
    async def go() -> None:
        async with DoctorKubeApi() as api:
            healthy_control_plane(api)
            api.objects.pop(("configmaps", "kube-flannel", "kube-flannel-cfg"))
            api.put("configmaps", flannel_configmap("10.224.0.0/16", namespace="net") | {
                "metadata": {"name": "flannel-cfg", "namespace": "net", "labels": {"app": "flannel"}}})
            await api.put_node(flannel_node("cp1", "10.244.0.0/24"))
            api.put("pods", flannel_pod("flannel-abc", "cp1", namespace="net"))
            config = str(kubeconfig_file(tmp_path / "kubeconfig", api.url))
            code = await asyncio.to_thread(doctor.main, ["doctor", "--kubeconfig", config, "-o", "json",
                                                         "--flannel-configmap", "net/flannel-cfg"])
            doc = json.loads(capsys.readouterr().out)
            assert code == 1
            assert [c["configMap"] for c in doc["flannelConfigMaps"]] == ["net/flannel-cfg"]
            fix = next(x for x in doc["fixes"] if x["action"] == "set-flannel-network")
            assert (fix["namespace"], fix["configMap"]) == ("net", "flannel-cfg")
            paths = {r.path for r in api.requests}
            assert "/api/v1/namespaces/net/configmaps/flannel-cfg" in paths
            assert "/api/v1/namespaces/kube-flannel/configmaps/kube-flannel-cfg" not in paths
            assert any(r.path == "/api/v1/namespaces/net/pods" for r in api.requests)

            code = await asyncio.to_thread(doctor.main, ["doctor", "--kubeconfig", config,
                                                         "--flannel-configmap", "no-slash"])
            assert code == 2 and "expected NAMESPACE/NAME" in capsys.readouterr().err

    run(go())


# --- flannel-guard itself ------------------------------------------------------------------------------


def guard_cluster(**kw: Any) -> Callable[[DoctorKubeApi], Awaitable[None]]:
    bundle = certs.generate("flannel-guard", "flannel-guard", days=365)
    other = certs.generate("flannel-guard", "flannel-guard", days=365)

    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        await api.put_node(flannel_node("cp1", "10.244.0.0/24"))
        ca = other.ca_cert_pem if kw.pop("foreign_ca", False) else bundle.ca_cert_pem
        guard_objects(api, cert_pem=bundle.cert_pem, ca_pem=ca, **kw)

    return build


def test_a_healthy_flannel_guard_shows_in_its_row() -> None:
    report, api = scenario(guard_cluster(allocate="off"))
    assert report.findings == ()
    g = report.guard
    assert g is not None
    assert (g.validating, g.mutating, g.ready_endpoints, g.cert_verified) == (True, True, 2, True)
    assert g.allocator == "off"
    assert any(r.path == "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/flannel-guard"
               for r in api.requests)


def test_flannel_guard_without_ready_endpoints_blocks_writes() -> None:
    report, _ = scenario(guard_cluster(ready=0))
    f = only(report, "GuardNoEndpoints")
    assert f.severity is Severity.ERROR and "has no ready endpoint (1 not ready)" in f.summary
    assert "failurePolicy Fail" in f.detail
    assert "kubectl delete validatingwebhookconfiguration,mutatingwebhookconfiguration" in f.fixes[0].text


def test_a_cabundle_that_does_not_verify_the_serving_certificate() -> None:
    report, _ = scenario(guard_cluster(foreign_ca=True))
    found = [f for f in report.findings if f.code == "GuardCABundleMismatch"]
    assert len(found) == 4  # three validating webhooks and one mutating
    assert "x509: certificate signed by unknown authority" in found[0].detail
    assert report.guard is not None and report.guard.cert_verified is False


def test_an_expired_or_expiring_serving_certificate() -> None:
    async def go() -> ClusterFacts:
        async with DoctorKubeApi() as api:
            await guard_cluster()(api)
            return await read(api)

    facts = run(go())
    soon = datetime.now(UTC) + timedelta(days=350)
    later = datetime.now(UTC) + timedelta(days=400)
    assert only(diagnose(facts, now=soon), "GuardCertExpiring").severity is Severity.WARNING
    expired = only(diagnose(facts, now=later), "GuardCertExpired")
    assert expired.severity is Severity.ERROR and "flannel-guard certs" in expired.fixes[0].text


def test_a_missing_mutating_webhook_with_the_allocator_on() -> None:
    report, _ = scenario(guard_cluster(mutating=False))
    f = only(report, "GuardWebhookMissing")
    assert "MutatingWebhookConfiguration flannel-guard is not registered but the allocator is on" in f.summary


def test_flannel_guard_not_installed_is_a_note_not_a_finding() -> None:
    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        await api.put_node(flannel_node("cp1", "10.244.0.0/24"))

    report, _ = scenario(build)
    assert report.findings == () and report.guard is None
    assert any("flannel-guard is not installed" in n for n in report.notes)


def test_a_forbidden_secret_is_noted() -> None:
    async def build(api: DoctorKubeApi) -> None:
        await guard_cluster()(api)
        api.forbidden.add("/api/v1/namespaces/flannel-guard/secrets/flannel-guard-tls")

    report, _ = scenario(build)
    assert any("Secret flannel-guard/flannel-guard-tls: HTTP 403" in n for n in report.notes)
    assert any("serving certificate" in n and "could not be read" in n for n in report.notes)


def test_many_nodes_announcing_an_address_of_their_own_are_one_suspect() -> None:
    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        for i in range(8):
            await api.put_node(flannel_node(f"w{i}", f"10.244.{i}.0/24", public_ip=f"203.0.113.{i + 1}",
                                            internal_ip=f"192.168.56.{11 + i}"))

    report, _ = scenario(build)
    f = only(report, "PublicIPNotNodeAddress")
    assert f.subject == "8 nodes" and len(f.subjects) == 8
    assert "w0 (203.0.113.1), w1 (203.0.113.2)" in f.summary


def test_conflicting_mask_flags_of_kube_controller_manager_come_from_its_flags() -> None:
    """kube-controller-manager app/core.go setNodeCIDRMaskSizes: the generic and a per-family flag."""
    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        api.put("pods", kcm_pod(cluster_cidr=V4, extra=("--node-cidr-mask-size=24",
                                                        "--node-cidr-mask-size-ipv4=24")))
        await api.put_node(flannel_node("cp1", "10.244.0.0/24"))

    report, _ = scenario(build)
    f = only(report, "ControllerManagerFlagConflict")
    assert f.root_cause and "refuses to start" in f.summary


def test_a_serving_certificate_for_another_name_and_a_missing_validating_webhook() -> None:
    """kube-apiserver checks clientConfig.service's DNS name: a certificate for another Service fails."""
    wrong = certs.generate("webhook", "default", days=365)

    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        await api.put_node(flannel_node("cp1", "10.244.0.0/24"))
        guard_objects(api, cert_pem=wrong.cert_pem, ca_pem=wrong.ca_cert_pem)
        api.objects.pop(("validatingwebhookconfigurations", "", "flannel-guard"))

    report, _ = scenario(build)
    name = only(report, "GuardCertWrongName")
    assert "does not name flannel-guard.flannel-guard.svc (it names webhook, webhook.default" in name.summary
    missing = only(report, "GuardWebhookMissing")
    assert missing.summary.startswith("ValidatingWebhookConfiguration flannel-guard is not registered")
    assert report.guard is not None and report.guard.cert_verified is True  # its own CA still verifies it


def test_cni_not_ready_while_flannel_crashes_follows_from_the_pod() -> None:
    async def build(api: DoctorKubeApi) -> None:
        healthy_control_plane(api)
        await api.put_node(flannel_node("cp1", "10.244.0.0/24"))
        await api.put_node(flannel_node("w1", "10.244.1.0/24", flannel_ran=False,
                                        ready_message=CNI_NOT_INITIALIZED))
        api.put("pods", flannel_pod("kube-flannel-ds-w1", "w1", ready=False, restarts=1))
        api.logs["kube-flannel", "kube-flannel-ds-w1"] = f"{KLOG}main.go:292] {BR_NETFILTER}\n"

    report, _ = scenario(build)
    cni = only(report, "CNINotReady")
    assert cni.caused_by == "FlannelPodNotReady" and "The flannel pod there is not Ready" in cni.detail
    assert report.root_cause is not None and report.root_cause.code == "BrNetfilterMissing"


def test_a_tls_secret_that_is_not_a_certificate() -> None:
    async def build(api: DoctorKubeApi) -> None:
        await guard_cluster()(api)
        api.get("secrets", "flannel-guard", "flannel-guard-tls")["data"]["tls.crt"] = "bm90IGEgY2VydA=="

    report, _ = scenario(build)
    assert only(report, "GuardCertUnreadable").summary.startswith(
        "Secret flannel-guard/flannel-guard-tls tls.crt is not a PEM certificate")

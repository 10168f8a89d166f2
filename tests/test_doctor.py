"""``flannel-guard doctor``: the pure diagnosis as tables, then the seed's cluster served on 127.0.0.1.

The loopback tests run ``main`` in a worker thread (it has its own event loop)
while :class:`doctor_cluster.DoctorKubeApi` serves on the test's loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from doctor_cluster import SEED_LOG, SEED_MESSAGE, DoctorKubeApi, apply_fix, flannel_configmap, seed_cluster
from kube_emulator import (
    client_for,
    free_port,
    kcm_pod,
    kube_proxy_configmap,
    kubeadm_configmap,
    kubeconfig_file,
)

from webhook import doctor
from webhook.core.discovery import (
    CidrSource,
    Resolution,
    flag_source,
    from_controller_manager_pod,
    from_kube_proxy,
    from_kubeadm_config,
)
from webhook.core.resolve import resolve
from webhook.core.rules.flannel import parse_net_conf
from webhook.doctor import (
    ClusterFacts,
    ConfigMapFacts,
    NodeFacts,
    PodFacts,
    Report,
    diagnose,
    gather,
    render_json,
    render_text,
)

T = TypeVar("T")
V4 = "10.244.0.0/16"
DUAL = "10.244.0.0/16,fd00:10:244::/56"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 25))


# --- builders for pure facts ------------------------------------------------------------------


def resolution(kcm: str | None = V4, *, allocate: bool = True, pod_subnet: str | None = V4,
               proxy: str | None = None, flag: str | None = None, service: str | None = "10.96.0.0/12",
               extra: tuple[str, ...] = ()) -> Resolution:
    """As :func:`webhook.kube.cluster.discover` builds it from kubeadm-shaped objects."""
    sources: list[CidrSource] = [flag_source(flag)] if flag else []
    services: list[CidrSource] = []
    kcm_facts = from_controller_manager_pod(
        kcm_pod(cluster_cidr=kcm, allocate=allocate, service_range=service, extra=extra))
    sources.append(kcm_facts.cluster_cidr)
    if kcm_facts.service_cluster_ip_range:
        services.append(kcm_facts.service_cluster_ip_range)
    pod, _ = from_kubeadm_config(kubeadm_configmap("v1beta3", pod_subnet=pod_subnet))
    assert pod is not None
    sources.append(pod)
    proxied = from_kube_proxy(kube_proxy_configmap(proxy))
    if proxied:
        sources.append(proxied)
    return resolve(sources, services=services, controller_managers=[kcm_facts])


def net_conf(network: str | None = V4, **extra: Any) -> str:
    doc: dict[str, Any] = {"Network": network, "Backend": {"Type": "vxlan"}, **extra}
    return json.dumps({k: v for k, v in doc.items() if v is not None}, indent=2)


def facts(res: Resolution | None = None, *, flannel: str | None = None,
          nodes: dict[str, Sequence[str]] | None = None, pods: Sequence[PodFacts] = (),
          no_configmap: bool = False) -> ClusterFacts:
    cms = () if no_configmap else (ConfigMapFacts("kube-flannel", "kube-flannel-cfg",
                                                  flannel if flannel is not None else net_conf()),)
    if nodes is None:
        nodes = {"cp1": ["10.244.0.0/24"], "worker-0001": ["10.244.1.0/24"]}
    return ClusterFacts(resolution=res or resolution(), configmaps=cms,
                        nodes=tuple(NodeFacts(n, tuple(c)) for n, c in nodes.items()), pods=tuple(pods))


def codes(report: Report) -> list[str]:
    return [f.code for f in report.findings]


def actions(report: Report) -> list[str]:
    return [f.action for f in report.fixes]


def fix_of(report: Report, action: str) -> dict[str, Any]:
    return next(f.to_json() for f in report.fixes if f.action == action)


def node_row(report: Report, name: str) -> tuple[str, ...]:
    return next(n.problems for n in report.nodes if n.name == name)


def seed_facts(*workers: str) -> ClusterFacts:
    nodes = {"cp1": ["172.18.0.0/24"], **{w: [] for w in workers}}
    pods = [PodFacts("kube-flannel", f"kube-flannel-ds-{w}", w, False, "CrashLoopBackOff", 3,
                     SEED_MESSAGE.replace("worker-0001", w)) for w in workers]
    return facts(resolution(None, allocate=False, pod_subnet=None), flannel=net_conf("172.18.0.0/16"),
                 nodes=nodes, pods=pods)


# --- the module ---------------------------------------------------------------------------------


def test_public_names_are_pinned() -> None:
    """The module exports exactly its documented API."""
    assert sorted(doctor.__all__) == sorted([
        "EXIT_FINDINGS", "EXIT_HEALTHY", "EXIT_UNREADABLE", "ClusterFacts", "ClusterUnreadable",
        "ConfigMapFacts", "DoctorFinding", "Fix", "NodeFacts", "PodFacts", "Report", "add_parser",
        "diagnose", "gather", "main", "render_json", "render_text", "run",
    ])


# --- pure diagnosis -------------------------------------------------------------------------------


def test_a_consistent_cluster_is_healthy() -> None:
    """kubeadm, kube-controller-manager, kube-proxy, flannel and nodes agree: exit 0, nothing to fix."""
    report = diagnose(facts(resolution(proxy=V4),
                            pods=[PodFacts("kube-flannel", "kube-flannel-ds-a", "cp1", True, "Running")]))
    assert report.findings == ()
    assert report.exit_code == 0
    assert report.agree and report.allocate_node_cidrs is True
    assert [(c.blocks, c.nodes, c.used) for c in report.capacity] == [(256, 2, 2)]
    assert all(n.problems == () for n in report.nodes)
    assert "HEALTHY" in render_text(report)


def test_the_seed_names_the_root_cause_and_proposes_the_flannel_network() -> None:
    """kubeadm without podSubnet, kcm without --cluster-cidr: flannel's Network is the one to propose."""
    report = diagnose(seed_facts("worker-0001"))
    root = report.root_cause
    assert root is not None and root is report.findings[0]
    assert root.code == "NoClusterCIDR"
    assert "kubeadm init ran without --pod-network-cidr" in root.summary
    assert report.cluster_cidr == (ipaddress.ip_network("172.18.0.0/16"),)
    assert actions(report) == ["set-controller-manager-flags", "set-kubeadm-pod-subnet", "patch-node",
                               "restart-pod"]
    assert fix_of(report, "set-controller-manager-flags")["flags"] == {
        "cluster-cidr": "172.18.0.0/16", "allocate-node-cidrs": "true"}
    assert fix_of(report, "set-kubeadm-pod-subnet")["podSubnet"] == "172.18.0.0/16"
    patch = fix_of(report, "patch-node")
    assert patch["node"] == "worker-0001"
    assert patch["patch"] == {"spec": {"podCIDR": "172.18.1.0/24", "podCIDRs": ["172.18.1.0/24"]}}
    assert patch["text"] == ("kubectl patch node worker-0001 -p"
                             """ '{"spec":{"podCIDR":"172.18.1.0/24","podCIDRs":["172.18.1.0/24"]}}'""")
    assert node_row(report, "worker-0001") == ("missing",)
    assert report.exit_code == 1


def test_several_nodes_without_a_podcidr_each_get_a_different_free_subnet() -> None:
    """Field report #4 on three workers: three distinct subnets, none the control plane's."""
    report = diagnose(seed_facts("worker-0001", "worker-0002", "worker-0003"))
    patches = [f.to_json() for f in report.fixes if f.action == "patch-node"]
    assert [(p["node"], p["patch"]["spec"]["podCIDR"]) for p in patches] == [
        ("worker-0001", "172.18.1.0/24"), ("worker-0002", "172.18.2.0/24"), ("worker-0003", "172.18.3.0/24")]


@pytest.mark.parametrize(("given", "code", "action", "params"), [
    pytest.param(facts(resolution(allocate=False)), "NodeCIDRAllocationOff", "set-controller-manager-flags",
                 {"flags": {"allocate-node-cidrs": "true"}}, id="kcm-flags-lost-on-upgrade"),
    pytest.param(facts(resolution(kcm="10.245.0.0/16", pod_subnet=V4), flannel=net_conf("10.245.0.0/16"),
                       nodes={"cp1": ["10.245.0.0/24"]}), "ClusterCIDRDisagreement",
                 "set-kubeadm-pod-subnet", {"podSubnet": "10.245.0.0/16"}, id="kubeadm-disagrees"),
    # The nodes live in kubeadm's (and flannel's) range, not in kube-controller-manager's: the flag
    # moves, not the nodes.
    pytest.param(facts(resolution(kcm="10.245.0.0/16", pod_subnet=V4)), "ClusterCIDRDisagreement",
                 "set-controller-manager-flags", {"flags": {"cluster-cidr": V4}},
                 id="kcm-disagrees-with-where-the-nodes-are"),
    pytest.param(facts(resolution(proxy="10.32.0.0/16")), "ClusterCIDRDisagreement",
                 "set-kube-proxy-cluster-cidr", {"clusterCIDR": V4}, id="kube-proxy-disagrees"),
    pytest.param(facts(resolution(pod_subnet=None)), "KubeadmNoPodSubnet", "set-kubeadm-pod-subnet",
                 {"podSubnet": V4}, id="kubeadm-without-podsubnet"),
    pytest.param(facts(flannel=net_conf("10.224.0.0/16")), "NetworkMismatch", "set-flannel-network",
                 {"namespace": "kube-flannel", "configMap": "kube-flannel-cfg"}, id="flannel-network-typo"),
    pytest.param(facts(nodes={"cp1": ["10.244.0.0/24"], "w1": ["10.99.1.0/24"]}), "BadNodePodCIDR",
                 "recreate-node", {"node": "w1", "podCIDRs": ["10.244.1.0/24"]}, id="node-outside"),
    pytest.param(facts(nodes={"cp1": ["10.244.0.0/24"], "w1": ["10.244.8.0/23"]}), "BadNodePodCIDR",
                 "recreate-node", {"node": "w1", "podCIDRs": ["10.244.1.0/24"]}, id="node-wrong-size"),
    pytest.param(facts(nodes={"cp1": ["10.244.0.0/24"], "w1": ["10.244.0.0/24"]}), "BadNodePodCIDR",
                 "recreate-node", {"node": "w1", "podCIDRs": ["10.244.1.0/24"]}, id="node-overlap"),
    pytest.param(facts(resolution(service="10.244.0.0/20")), "PodServiceOverlap", "manual", {},
                 id="pod-range-overlaps-services"),
    pytest.param(facts(no_configmap=True), "NoFlannelConfigMap", "manual", {}, id="no-flannel-configmap"),
    pytest.param(facts(flannel='{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "X": 0E-2A}}'),
                 "NetConfNotJSON", "manual", {}, id="net-conf-not-json"),
    pytest.param(facts(pods=[PodFacts("kube-flannel", "kube-flannel-ds-x", "w1", False, "CrashLoopBackOff",
                                      2, "E0101 00:00:00.000000 1 main.go:1] failed to find interface")]),
                 "FlannelPodNotReady", "restart-pod", {"pod": "kube-flannel-ds-x"},
                 id="flannel-pod-crashing"),
])
def test_each_kind_of_finding_comes_with_its_fix(given: ClusterFacts, code: str, action: str,
                                                 params: dict[str, Any]) -> None:
    """One problem per row: its code is reported, exit 1, and the fix carries the right values."""
    report = diagnose(given)
    assert code in codes(report)
    assert report.exit_code == 1
    finding = next(f for f in report.findings if f.code == code)
    fix = next(f.to_json() for f in finding.fixes if f.action == action)
    assert fix["text"]
    assert params.items() <= fix.items()


def test_the_corrected_net_conf_keeps_the_backend_and_sets_the_cluster_cidr() -> None:
    """Field report #1 (10.224 vs 10.244): the proposed net-conf.json is what flannel accepts and matches."""
    text = net_conf("10.224.0.0/16", Backend={"Type": "vxlan", "VNI": 4096})
    report = diagnose(facts(flannel=text))
    fixed = fix_of(report, "set-flannel-network")["netConf"]
    conf = parse_net_conf(fixed).conf
    assert conf is not None and str(conf.network.network) == V4  # type: ignore[union-attr]
    assert json.loads(fixed)["Backend"] == {"Type": "vxlan", "VNI": 4096}
    assert report.configmaps[0].accepted and report.configmaps[0].matches is False


def test_a_slash_25_with_mask_24_holds_no_node_block() -> None:
    """Field report #7: zero blocks, the shortage named, a mask that fits proposed, no subnet invented."""
    report = diagnose(facts(resolution("10.244.0.0/25", pod_subnet="10.244.0.0/25"),
                            flannel=net_conf("10.244.0.0/25"), nodes={"a": [], "b": [], "c": []}))
    assert [(c.blocks, c.nodes) for c in report.capacity] == [(0, 3)]
    assert codes(report)[0] == "ClusterCIDRTooSmall"
    assert "holds no node block of /24 for 3 node(s)" in report.findings[0].summary
    assert fix_of(report, "set-controller-manager-flags")["flags"] == {"node-cidr-mask-size-ipv4": "27"}
    assert "patch-node" not in actions(report)
    assert all(node_row(report, n) == ("missing",) for n in "abc")


def test_a_mask_equal_to_the_range_holds_a_single_block() -> None:
    """kubernetes#103898: mask 16 on a /16 holds one node block, three nodes need three."""
    report = diagnose(facts(resolution(extra=("--node-cidr-mask-size=16",)),
                            nodes={"a": ["10.244.0.0/16"], "b": [], "c": []}))
    assert [(c.blocks, c.nodes, c.used) for c in report.capacity] == [(1, 3, 1)]
    assert "ClusterCIDRTooSmall" in codes(report)


def test_every_node_with_the_whole_range_gets_its_own_subnet() -> None:
    """Field report #5: three nodes hand-patched with 10.244.0.0/16 each; all wrong, three distinct /24s."""
    report = diagnose(facts(nodes={n: [V4] for n in ("n1", "n2", "n3")}))
    assert all("wrong-size" in node_row(report, n) for n in ("n1", "n2", "n3"))
    fixes = [f.to_json() for f in report.fixes if f.action == "recreate-node"]
    assert [f["podCIDRs"] for f in fixes] == [["10.244.0.0/24"], ["10.244.1.0/24"], ["10.244.2.0/24"]]


def test_dual_stack_healthy_and_broken() -> None:
    """Field report #8: both families counted; flannel without IPv6Network, 3 podCIDRs, a missing family."""
    healthy = diagnose(facts(resolution(DUAL, pod_subnet=DUAL, service="10.96.0.0/12,fd00:96::/112"),
                             flannel=net_conf(IPv6Network="fd00:10:244::/56", EnableIPv6=True),
                             nodes={"a": ["10.244.0.0/24", "fd00:10:244::/64"]}))
    assert healthy.findings == ()
    assert [(str(c.cluster_cidr), c.mask, c.blocks) for c in healthy.capacity] == [
        ("10.244.0.0/16", 24, 256), ("fd00:10:244::/56", 64, 256)]

    broken = diagnose(facts(resolution(DUAL, pod_subnet=DUAL), flannel=net_conf(), nodes={
        "a": ["10.244.0.0/24", "fd00:10:244::/64"],
        "b": ["10.244.1.0/24", "fd00:10:244:1::/64", "10.244.2.0/24"],
        "c": ["10.244.3.0/24"],
    }))
    assert "FamilyNotInFlannel" in codes(broken)
    fixed = json.loads(fix_of(broken, "set-flannel-network")["netConf"])
    assert fixed["IPv6Network"] == "fd00:10:244::/56" and fixed["EnableIPv6"] is True
    assert "too-many" in node_row(broken, "b")
    assert node_row(broken, "c") == ("missing-ipv6",)
    recreate_b = next(f.to_json() for f in broken.fixes
                      if f.action == "recreate-node" and f.params["node"] == "b")
    assert recreate_b["podCIDRs"] == ["10.244.4.0/24", "fd00:10:244:2::/64"]


def test_the_cluster_cidr_override_wins_and_everything_else_is_measured_against_it() -> None:
    """--cluster-cidr 172.18.0.0/16 on a 10.244 cluster: kcm, kubeadm, flannel and nodes all differ."""
    report = diagnose(facts(resolution(flag="172.18.0.0/16")))
    assert report.cluster_cidr == (ipaddress.ip_network("172.18.0.0/16"),)
    assert {"ClusterCIDRDisagreement", "NetworkMismatch", "BadNodePodCIDR"} <= set(codes(report))


def test_text_output_is_an_aligned_table() -> None:
    """Every row of the node table starts its STATUS column at the same place; fixes follow findings."""
    report = diagnose(seed_facts("worker-0001", "worker-0002"))
    lines = render_text(report).splitlines()
    start = lines.index("NODES (3)") + 1
    table = lines[start:start + 4]
    column = table[0].index("STATUS")
    assert all(len(row) > column and row[column - 2:column] == "  " for row in table[1:])
    assert lines[0].startswith("flannel-guard doctor: UNHEALTHY")
    assert lines[1].startswith("ROOT CAUSE: kubeadm init ran without --pod-network-cidr")
    fix_line = next(i for i, line in enumerate(lines) if "kubectl patch node worker-0001" in line)
    # kube-controller-manager is being fixed to allocate: the patch is the alternative, not a step.
    assert lines[fix_line].lstrip().startswith("or: ")


def test_json_output_carries_the_tables_and_the_fixes() -> None:
    doc = json.loads(render_json(diagnose(seed_facts("worker-0001"))))
    assert doc["healthy"] is False and doc["exitCode"] == 1
    assert doc["clusterCIDR"]["proposed"] == "172.18.0.0/16"
    assert doc["allocation"]["allocateNodeCIDRs"] is None
    assert doc["nodes"][1] == {"name": "worker-0001", "podCIDRs": [], "ok": False, "problems": ["missing"]}
    assert doc["flannelPodsNotReady"][0]["lastLogLine"] == SEED_MESSAGE
    assert doc["findings"][0]["rootCause"] is True
    assert [f["action"] for f in doc["fixes"]][:2] == ["set-controller-manager-flags",
                                                       "set-kubeadm-pod-subnet"]


# --- against an emulated API on 127.0.0.1 ---------------------------------------------------------


async def doctor_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(doctor.main, ["doctor", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_seed_cluster_is_diagnosed_and_its_fixes_make_it_healthy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """doctor names the root cause and prints the fixes; applied to the cluster, a second run exits 0."""

    async def scenario() -> None:
        async with DoctorKubeApi() as api:
            await seed_cluster(api)
            config = str(kubeconfig_file(tmp_path / "kubeconfig", api.url))
            code, out, _ = await doctor_cli(capsys, "--kubeconfig", config)
            assert code == 1
            assert "ROOT CAUSE: kubeadm init ran without --pod-network-cidr" in out
            assert ("kubectl patch node worker-0001 -p"
                    """ '{"spec":{"podCIDR":"172.18.1.0/24","podCIDRs":["172.18.1.0/24"]}}'""") in out
            assert "--cluster-cidr=172.18.0.0/16 --allocate-node-cidrs=true" in out
            assert "networking.podSubnet: 172.18.0.0/16" in out
            assert SEED_MESSAGE in out and SEED_LOG not in out  # klog's header trimmed
            assert {r.method for r in api.requests} == {"GET"}
            logs = [r for r in api.requests if r.path.endswith("/log")]
            assert [(r.path, r.query) for r in logs] == [
                ("/api/v1/namespaces/kube-flannel/pods/kube-flannel-ds-j69g6/log",
                 {"container": "kube-flannel", "tailLines": "20"})]

            code, out, _ = await doctor_cli(capsys, "--kubeconfig", config, "--output", "json")
            assert code == 1
            fixes = json.loads(out)["fixes"]
            assert "manual" not in [f["action"] for f in fixes]
            for fix in fixes:
                await apply_fix(api, fix)

            code, out, _ = await doctor_cli(capsys, "--kubeconfig", config)
            assert code == 0, out
            assert out.startswith("flannel-guard doctor: HEALTHY")
            assert "worker-0001  172.18.1.0/24  ok" in out

    run(scenario())


def test_forbidden_reads_are_noted_and_the_diagnosis_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    """403 on the kube-system pods and on a pod's log: noted; the node finding is still there."""

    async def scenario() -> ClusterFacts:
        async with DoctorKubeApi() as api:
            await seed_cluster(api)
            api.forbidden |= {"/api/v1/namespaces/kube-flannel/pods/kube-flannel-ds-j69g6/log",
                              "/api/v1/namespaces/kube-system/configmaps/kube-flannel-cfg"}
            return await gather(client_for(api.url), timeout=5.0)

    got = run(scenario())
    assert any("log of pod kube-flannel/kube-flannel-ds-j69g6: HTTP 403" in n for n in got.notes)
    assert any("kube-system/kube-flannel-cfg: HTTP 403" in n for n in got.notes)
    report = diagnose(got)
    assert "NodeWithoutPodCIDR" in codes(report)
    assert report.pods_not_ready[0].last_log_line is None
    assert any("HTTP 403" in n for n in report.notes)


def test_the_last_error_line_is_preferred_to_a_trailing_info_line() -> None:
    async def scenario() -> ClusterFacts:
        async with DoctorKubeApi() as api:
            await seed_cluster(api)
            api.logs["kube-flannel", "kube-flannel-ds-j69g6"] += "I0218 06:23:22.9 1 main.go:9] Stopping\n\n"
            api.put("configmaps", flannel_configmap("172.18.0.0/16", namespace="kube-system"))
            return await gather(client_for(api.url), timeout=5.0)

    got = run(scenario())
    assert [p.last_log_line for p in got.pods if not p.ready] == [SEED_MESSAGE]
    assert [c.ref for c in got.configmaps] == ["kube-flannel/kube-flannel-cfg",
                                               "kube-system/kube-flannel-cfg"]


@pytest.mark.parametrize("output", ["text", "json"])
def test_an_unreachable_api_exits_2_with_a_clear_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = kubeconfig_file(tmp_path / "kubeconfig", url)
    code = doctor.main(["doctor", "--kubeconfig", str(config), "--output", output, "--timeout", "2"])
    out, err = capsys.readouterr()
    assert code == 2
    assert f"cannot read the cluster: cannot reach the Kubernetes API at {url}: connection refused" in err
    if output == "json":
        assert json.loads(out)["exitCode"] == 2


def test_a_missing_kubeconfig_or_a_bad_override_exits_2(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor.main(["doctor", "--kubeconfig", str(tmp_path / "absent")]) == 2
    assert "no usable kubeconfig" in capsys.readouterr().err
    absent = str(tmp_path / "absent")
    assert doctor.main(["doctor", "--kubeconfig", absent, "--cluster-cidr", "10.0.0.1/8"]) == 2
    assert "--cluster-cidr" in capsys.readouterr().err


def test_the_command_line_loads_neither_the_kubernetes_client_nor_the_diagnosis() -> None:
    """`flannel-guard check` builds the whole parser (doctor's included) without importing them."""
    import subprocess
    import sys

    code = ("import sys, webhook.cli; webhook.cli._parser();"
            " print(sorted(m for m in ('kubernetes', 'urllib3', 'cryptography', 'webhook.doctor.diagnosis')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    assert out.strip() == "[]"


def test_nodes_without_a_podcidr_follow_from_the_allocation_finding() -> None:
    """The seed: the node finding points at NoClusterCIDR, the pods' finding at the node finding."""
    report = diagnose(seed_facts("worker-0001", "worker-0002"))
    by_code = {f.code: f for f in report.findings}
    assert by_code["NodeWithoutPodCIDR"].caused_by == "NoClusterCIDR"
    assert by_code["FlannelPodNotReady"].caused_by == "NodeWithoutPodCIDR"
    assert "[follows from 1]" in render_text(report)

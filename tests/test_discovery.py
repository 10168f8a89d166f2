"""The pure cluster-cidr parsers and their reconciliation (webhook.core.discovery)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from kube_emulator import kcm_pod, kube_proxy_configmap, kubeadm_configmap

from webhook.core import discovery
from webhook.core.discovery import (
    CidrSource,
    SourceKind,
    flag_source,
    from_controller_manager_pod,
    from_kube_proxy,
    from_kubeadm_config,
    node_mask_sizes,
)
from webhook.core.resolve import resolve

V4 = ipaddress.ip_network("10.244.0.0/16")
V6 = ipaddress.ip_network("fd00:10:244::/56")
SEED = ipaddress.ip_network("172.18.0.0/16")


def test_public_names_are_pinned() -> None:
    """The module exports exactly its documented API."""
    assert sorted(discovery.__all__) == sorted([
        "KUBEADM_API_VERSIONS", "ORDER", "CidrSource", "ControllerManagerFacts", "Resolution",
        "SourceKind", "flag_source", "from_controller_manager_pod", "from_flannel_configmap",
        "from_kube_proxy", "from_kubeadm_config", "node_mask_sizes",
    ])


# --- kube-controller-manager ---------------------------------------------------------------


@pytest.mark.parametrize(("pod", "cidr", "allocate", "service"), [
    pytest.param(kcm_pod(), (V4,), True, "10.96.0.0/12", id="kubeadm-static-pod-command"),
    pytest.param(kcm_pod(in_args=True), (V4,), True, "10.96.0.0/12", id="args-flag-space-value"),
    pytest.param(kcm_pod(cluster_cidr="10.244.0.0/16,fd00:10:244::/56",
                         service_range="10.96.0.0/12,fd00::/108"),
                 (V4, V6), True, "10.96.0.0/12,fd00::/108", id="dual-stack"),
    pytest.param(kcm_pod(cluster_cidr=None, allocate=False), (), None, "10.96.0.0/12",
                 id="kubeadm-init-without-pod-network-cidr"),
    pytest.param(kcm_pod(extra=("--allocate-node-cidrs=false",)), (V4,), False, "10.96.0.0/12",
                 id="last-occurrence-wins"),
    pytest.param(kcm_pod(service_range=None), (V4,), True, None, id="no-service-range"),
], )
def test_controller_manager_flags_are_read_from_command_and_args(
    pod: dict[str, Any], cidr: tuple[Any, ...], allocate: bool | None, service: str | None,
) -> None:
    """--cluster-cidr, --allocate-node-cidrs and --service-cluster-ip-range come from the pod's argv."""
    facts = from_controller_manager_pod(pod)
    assert facts.pod == "kube-system/" + pod["metadata"]["name"]
    assert facts.cluster_cidr.networks == cidr
    assert facts.cluster_cidr.kind is SourceKind.CONTROLLER_MANAGER
    assert "kube-controller-manager pod kube-system/" in facts.cluster_cidr.origin
    assert facts.allocate_node_cidrs is allocate
    if service is None:
        assert facts.service_cluster_ip_range is None
    else:
        assert facts.service_cluster_ip_range is not None
        assert facts.service_cluster_ip_range.describe() == service
    assert facts.notes == ()


@pytest.mark.parametrize(("extra", "masks"), [
    pytest.param(("--node-cidr-mask-size=25",), (25, None, None), id="equals"),
    pytest.param(("--node-cidr-mask-size", "26"), (26, None, None), id="space"),
    pytest.param(("--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6", "80"), (None, 24, 80),
                 id="per-family"),
])
def test_controller_manager_mask_flags_are_read(
    extra: tuple[str, ...], masks: tuple[int | None, ...],
) -> None:
    """--node-cidr-mask-size and its per-family forms are read in both flag forms."""
    facts = from_controller_manager_pod(kcm_pod(extra=extra))
    got = (facts.node_cidr_mask_size, facts.node_cidr_mask_size_ipv4, facts.node_cidr_mask_size_ipv6)
    assert got == masks


@pytest.mark.parametrize(("extra", "fragment"), [
    pytest.param(("--node-cidr-mask-size=big",), "--node-cidr-mask-size='big' is not a mask size", id="mask"),
    pytest.param(("--allocate-node-cidrs=yes",), "--allocate-node-cidrs='yes' is not a boolean", id="bool"),
])
def test_controller_manager_values_that_do_not_parse_become_notes(
    extra: tuple[str, ...], fragment: str,
) -> None:
    """A bad flag value is a note, never an exception."""
    facts = from_controller_manager_pod(kcm_pod(extra=extra))
    assert any(fragment in n for n in facts.notes)


def test_controller_manager_cluster_cidr_that_does_not_parse_keeps_its_reason() -> None:
    """An unparsable --cluster-cidr has no networks, its raw text and an error."""
    facts = from_controller_manager_pod(kcm_pod(cluster_cidr="10.244.0.0"))
    assert facts.cluster_cidr.networks == ()
    assert facts.cluster_cidr.raw == "10.244.0.0"
    assert facts.cluster_cidr.error and "prefix length" in facts.cluster_cidr.error


@pytest.mark.parametrize("pod", [
    pytest.param({}, id="empty"),
    pytest.param({"metadata": {"name": "x"}, "spec": {"containers": "nope"}}, id="containers-not-a-list"),
    pytest.param({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "command": None}]}},
                 id="no-command"),
])
def test_controller_manager_odd_pods_do_not_raise(pod: dict[str, Any]) -> None:
    """A pod of an unexpected shape yields facts without a cluster-cidr."""
    facts = from_controller_manager_pod(pod)
    assert facts.cluster_cidr.networks == ()
    assert facts.allocate_node_cidrs is None


def test_controller_manager_sidecar_flags_are_not_mistaken_for_its_own() -> None:
    """Only the kube-controller-manager container is read when there is one."""
    pod = kcm_pod()
    pod["spec"]["containers"].append({"name": "sidecar", "command": ["proxy", "--cluster-cidr=1.2.3.0/24"]})
    assert from_controller_manager_pod(pod).cluster_cidr.networks == (V4,)


# --- kubeadm-config -------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1beta2", "v1beta3", "v1beta4"])
@pytest.mark.parametrize(("pod_subnet", "want"), [
    pytest.param("10.244.0.0/16", (V4,), id="single"),
    pytest.param("10.244.0.0/16,fd00:10:244::/56", (V4, V6), id="dual"),
])
def test_kubeadm_pod_subnet_is_read_for_every_api_version(
    version: str, pod_subnet: str, want: tuple[Any, ...],
) -> None:
    """networking.podSubnet and serviceSubnet are read from v1beta2, v1beta3 and v1beta4 alike."""
    pod, service = from_kubeadm_config(kubeadm_configmap(version, pod_subnet))
    assert pod is not None and pod.networks == want
    assert pod.origin == "kubeadm-config ClusterConfiguration.networking.podSubnet"
    assert pod.kind is SourceKind.KUBEADM
    assert service is not None and service.describe() == "10.96.0.0/12"


@pytest.mark.parametrize("version", ["v1beta2", "v1beta3", "v1beta4"])
def test_kubeadm_without_pod_subnet_is_a_source_without_value(version: str) -> None:
    """kubeadm init without --pod-network-cidr leaves podSubnet out: present, unset."""
    pod, service = from_kubeadm_config(kubeadm_configmap(version, None))
    assert pod is not None and pod.networks == () and pod.raw == "" and pod.error is None
    assert service is not None


@pytest.mark.parametrize(("data", "error"), [
    pytest.param({"ClusterConfiguration": "networking: [unclosed"}, "not YAML", id="not-yaml"),
    pytest.param({"ClusterConfiguration": "- a\n- b\n"}, "not a YAML mapping", id="a-list"),
    pytest.param({"ClusterConfiguration":
                  "apiVersion: kubeadm.k8s.io/v1beta4\nnetworking:\n  podSubnet: 10.244.0.0\n"},
                 "prefix length", id="bad-cidr"),
    pytest.param({"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta1\nnetworking: {}\n"},
                 "v1beta1", id="unknown-version"),
])
def test_kubeadm_values_that_do_not_parse_keep_their_reason(data: dict[str, str], error: str) -> None:
    """An unreadable ClusterConfiguration is a podSubnet source with an error, not an exception."""
    pod, _ = from_kubeadm_config({"data": data})
    assert pod is not None and pod.networks == ()
    assert pod.error is not None and error in pod.error


def test_kubeadm_config_without_cluster_configuration_says_nothing() -> None:
    """A kubeadm-config without the key is no source."""
    assert from_kubeadm_config({"data": {}}) == (None, None)
    assert from_kubeadm_config({}) == (None, None)


# --- kube-proxy -------------------------------------------------------------------------------


@pytest.mark.parametrize(("cm", "want"), [
    pytest.param(kube_proxy_configmap("10.244.0.0/16"), (V4,), id="single"),
    pytest.param(kube_proxy_configmap("10.244.0.0/16,fd00:10:244::/56"), (V4, V6), id="dual"),
    pytest.param(kube_proxy_configmap(None), None, id="empty-string-as-kubeadm-writes"),
    pytest.param({"data": {"kubeconfig.conf": "x"}}, None, id="no-config-conf"),
    pytest.param({"data": {"config.conf": "kind: KubeProxyConfiguration\n"}}, None, id="no-clusterCIDR"),
])
def test_kube_proxy_cluster_cidr(cm: dict[str, Any], want: tuple[Any, ...] | None) -> None:
    """clusterCIDR from config.conf; empty or missing says nothing."""
    got = from_kube_proxy(cm)
    if want is None:
        assert got is None
    else:
        assert got is not None and got.networks == want and got.kind is SourceKind.KUBE_PROXY
        assert got.origin == "kube-proxy config.conf clusterCIDR"


@pytest.mark.parametrize(("conf", "error"), [
    pytest.param("clusterCIDR: 10.244.0.0/16,10.245.0.0/16\n", "one IPv4 and one IPv6", id="two-v4"),
    pytest.param("clusterCIDR: [1, 2]\n", "expected a string", id="a-list"),
    pytest.param("clusterCIDR: :\n  - x\n bad", "not YAML", id="not-yaml"),
])
def test_kube_proxy_values_that_do_not_parse_keep_their_reason(conf: str, error: str) -> None:
    """An unparsable clusterCIDR is a source with an error, not an exception."""
    got = from_kube_proxy({"data": {"config.conf": conf}})
    assert got is not None and got.networks == () and got.error and error in got.error


# --- resolve ------------------------------------------------------------------------------------


def _kcm(cidr: str | None, **kw: Any) -> Any:
    return from_controller_manager_pod(kcm_pod(cluster_cidr=cidr, allocate=cidr is not None, **kw))


def _kubeadm(pod_subnet: str | None, service: str | None = "10.96.0.0/12") -> tuple[Any, Any]:
    return from_kubeadm_config(kubeadm_configmap("v1beta4", pod_subnet, service))


def _proxy(cidr: str | None) -> CidrSource | None:
    return from_kube_proxy(kube_proxy_configmap(cidr))


def _case(flag: str | None, kcm: str | bool | None, kubeadm: str | bool | None,
          proxy: str | None) -> dict[str, Any]:
    """Arguments for resolve(); False leaves a source out entirely, None means present-but-unset."""
    sources: list[CidrSource] = []
    services: list[CidrSource] = []
    facts = []
    if flag is not None:
        sources.append(flag_source(flag))
    if kcm is not False:
        f = _kcm(kcm)  # type: ignore[arg-type]
        facts.append(f)
        sources.append(f.cluster_cidr)
        services.append(f.service_cluster_ip_range)
    if kubeadm is not False:
        pod, service = _kubeadm(kubeadm)  # type: ignore[arg-type]
        sources.append(pod)
        services.append(service)
    p = _proxy(proxy)
    if p is not None:
        sources.append(p)
    return {"sources": sources, "services": services, "controller_managers": facts}


def _resolve(case: dict[str, Any]) -> Any:
    return resolve(case["sources"], services=case["services"],
                   controller_managers=case["controller_managers"])


@pytest.mark.parametrize(("case", "effective", "origin_start"), [
    pytest.param(_case("172.18.0.0/16", False, False, None), (SEED,), "--cluster-cidr flag", id="flag-alone"),
    pytest.param(_case(None, "10.244.0.0/16", False, None), (V4,), "kube-controller-manager pod",
                 id="kcm-alone"),
    pytest.param(_case(None, False, "10.244.0.0/16", None), (V4,), "kubeadm-config", id="kubeadm-alone"),
    pytest.param(_case(None, False, False, "10.244.0.0/16"), (V4,), "kube-proxy", id="kube-proxy-alone"),
    pytest.param(_case(None, "10.244.0.0/16,fd00:10:244::/56", "10.244.0.0/16,fd00:10:244::/56",
                       "10.244.0.0/16,fd00:10:244::/56"), (V4, V6), "kube-controller-manager",
                 id="dual-agreeing"),
])
def test_each_source_alone_or_agreeing_wins_without_complaint(
    case: dict[str, Any], effective: tuple[Any, ...], origin_start: str,
) -> None:
    """A single source, or sources that agree, give the value and no disagreement note."""
    res = _resolve(case)
    assert res.effective is not None
    assert res.networks == effective
    assert res.effective.origin.startswith(origin_start)
    assert res.agree
    assert not [n for n in res.notes if "disagree" in n or "unset" in n or "no podSubnet" in n], res.notes


def test_all_sources_agreeing_keeps_every_origin() -> None:
    """All four sources agree: the flag wins, every source is kept, no notes at all."""
    res = _resolve(_case("10.244.0.0/16", "10.244.0.0/16", "10.244.0.0/16", "10.244.0.0/16"))
    assert res.effective is not None and res.effective.kind is SourceKind.FLAG
    assert [s.kind for s in res.sources] == [k for k in SourceKind
                                             if k not in (SourceKind.FLANNEL, SourceKind.NODE_ARGS)]
    assert res.notes == ()
    assert res.allocate_node_cidrs is True
    assert res.service is not None and res.service.describe() == "10.96.0.0/12"


def test_order_decides_not_the_list_position() -> None:
    """resolve() ranks by kind: kube-proxy listed first still loses to the controller-manager."""
    kcm = _kcm("10.244.0.0/16").cluster_cidr
    proxy = _proxy("10.245.0.0/16")
    res = resolve([proxy, kcm])  # type: ignore[list-item]
    assert res.effective == kcm


@pytest.mark.parametrize(("case", "effective", "fragments"), [
    pytest.param(_case(None, "172.18.0.0/16", None, None), (SEED,),
                 ["kubeadm-config has no podSubnet", "kubeadm init without --pod-network-cidr",
                  "172.18.0.0/16"],
                 id="seed-kubeadm-without-podSubnet-kcm-172.18"),
    pytest.param(_case("172.18.0.0/16", None, None, None), (SEED,),
                 ["kubeadm-config has no podSubnet", "--cluster-cidr is unset", "nodes get no podCIDR"],
                 id="seed-flag-172.18-kcm-and-kubeadm-unset"),
    pytest.param(_case(None, "10.244.0.0/16", "10.244.0.0/16", "172.18.0.0/16"), (V4,),
                 ["cluster-cidr disagreement: 172.18.0.0/16 (kube-proxy config.conf clusterCIDR)"
                  " vs 10.244.0.0/16 (kube-controller-manager pod"],
                 id="kube-proxy-differs"),
    pytest.param(_case("172.18.0.0/16", "10.244.0.0/16", False, None), (SEED,),
                 ["10.244.0.0/16 (kube-controller-manager pod kube-system/kube-controller-manager-cp1"
                  " --cluster-cidr) vs 172.18.0.0/16 (--cluster-cidr flag)"],
                 id="flag-overrides-kcm"),
    pytest.param(_case(None, "10.244.0.0/16,fd00:10:244::/56", "10.244.0.0/16", None), (V4, V6),
                 ["disagreement: 10.244.0.0/16 (kubeadm-config"], id="dual-vs-single"),
])
def test_disagreements_are_loud(
    case: dict[str, Any], effective: tuple[Any, ...], fragments: list[str],
) -> None:
    """Each disagreement is a note naming both origins and values; the first in order wins."""
    res = _resolve(case)
    assert res.networks == effective
    text = "\n".join(res.notes)
    for fragment in fragments:
        assert fragment in text, text
    assert all(len(n) < 200 for n in res.notes)


def test_disagreement_notes_stay_short_with_long_pod_names() -> None:
    """Origins are clipped so that every note stays under 200 characters."""
    a = from_controller_manager_pod(kcm_pod("k" * 250, cluster_cidr="10.244.0.0/16"))
    b = from_controller_manager_pod(kcm_pod("m" * 250, cluster_cidr="10.245.0.0/16"))
    res = resolve([a.cluster_cidr, b.cluster_cidr], controller_managers=[a, b])
    assert any("disagreement" in n for n in res.notes)
    assert all(len(n) < 200 for n in res.notes)


def test_no_source_is_a_clear_note() -> None:
    """Nothing answered: no effective value, and a note saying the ConfigMap rule cannot compare."""
    res = resolve([])
    assert res.effective is None and res.networks is None
    assert any("no cluster-cidr source answered" in n for n in res.notes)


def test_only_unset_sources_count_as_none() -> None:
    """kubeadm without podSubnet and kcm without --cluster-cidr give no effective value."""
    res = _resolve(_case(None, None, None, None))
    assert res.effective is None
    assert any("no cluster-cidr source answered" in n for n in res.notes)


@pytest.mark.parametrize(("source", "fragment"), [
    pytest.param(flag_source("10.244.0.1/16"), "host bits", id="flag-host-bits"),
    pytest.param(flag_source("10.244.0.0/16,10.245.0.0/16"), "one IPv4 and one IPv6", id="flag-two-v4"),
    pytest.param(_kcm("bogus").cluster_cidr, "is not a CIDR", id="kcm-bogus"),
])
def test_unparsable_values_are_notes_and_do_not_win(source: CidrSource, fragment: str) -> None:
    """A value that does not parse is named in a note and the next source wins."""
    proxy = _proxy("10.244.0.0/16")
    assert proxy is not None
    res = resolve([source, proxy])
    assert res.effective == proxy
    assert any("does not parse" in n and fragment in n for n in res.notes), res.notes


@pytest.mark.parametrize(("pods", "service", "overlap"), [
    pytest.param("10.96.0.0/16", "10.96.0.0/12", True, id="inside-v4"),
    pytest.param("10.0.0.0/8", "10.96.0.0/12", True, id="around-v4"),
    pytest.param("10.244.0.0/16", "10.96.0.0/12", False, id="apart-v4"),
    pytest.param("10.244.0.0/16,fd00::/56", "10.96.0.0/12,fd00::/108", True, id="dual-v6-overlaps"),
])
def test_pod_range_overlapping_service_range_is_reported(pods: str, service: str, overlap: bool) -> None:
    """Where both are known, a pod range overlapping the service range is a note."""
    f = _kcm(pods, service_range=service)
    res = resolve([f.cluster_cidr], services=[f.service_cluster_ip_range], controller_managers=[f])
    assert any("overlaps service range" in n for n in res.notes) is overlap


def test_controller_manager_not_allocating_is_reported() -> None:
    """--cluster-cidr without --allocate-node-cidrs=true: nodes get no podCIDR (flannel fails)."""
    f = from_controller_manager_pod(kcm_pod(cluster_cidr="10.244.0.0/16", allocate=False))
    res = resolve([f.cluster_cidr], controller_managers=[f])
    assert res.allocate_node_cidrs is None
    assert any("without --allocate-node-cidrs=true" in n for n in res.notes)


@pytest.mark.parametrize(("extra", "cidr", "want", "noted"), [
    pytest.param((), "10.244.0.0/16", (24, 64), False, id="defaults"),
    pytest.param(("--node-cidr-mask-size=25",), "10.244.0.0/16", (25, 25), False, id="single-stack-mask"),
    pytest.param(("--node-cidr-mask-size-ipv4=26", "--node-cidr-mask-size-ipv6=80"),
                 "10.244.0.0/16,fd00::/56", (26, 80), False, id="dual-per-family"),
    pytest.param(("--node-cidr-mask-size=25",), "10.244.0.0/16,fd00::/56", (24, 64), True,
                 id="dual-refuses-mask-size"),
    pytest.param(("--node-cidr-mask-size=25", "--node-cidr-mask-size-ipv4=26"), "10.244.0.0/16",
                 (25, 25), True, id="both-kinds-refused"),
])
def test_node_mask_sizes_follow_controller_manager(
    extra: tuple[str, ...], cidr: str, want: tuple[int, int], noted: bool,
) -> None:
    """Mask sizes as setNodeCIDRMaskSizes derives them, with a note where it would refuse to start."""
    f = from_controller_manager_pod(kcm_pod(cluster_cidr=cidr, extra=extra))
    v4, v6, notes = node_mask_sizes(f, f.cluster_cidr.networks)
    assert (v4, v6) == want
    assert bool(notes) is noted
    res = resolve([f.cluster_cidr], controller_managers=[f])
    assert (res.mask_v4, res.mask_v6) == want


def test_notes_are_not_repeated() -> None:
    """Two controller-manager pods saying the same thing produce each note once."""
    a = from_controller_manager_pod(kcm_pod("kcm-a", cluster_cidr="10.244.0.0/16", allocate=False))
    res = resolve([a.cluster_cidr, a.cluster_cidr], controller_managers=[a, a])
    assert len(res.notes) == len(set(res.notes))

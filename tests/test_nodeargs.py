"""k3s / RKE2 servers as cluster-cidr sources: their ``<program>.io/node-args`` annotation.

Upstream: k3s ``pkg/nodeconfig/nodeconfig.go`` ``getNodeArgs`` (``--flag=value`` recorded as two
elements, config.yaml values included), ``pkg/cli/server/server.go`` (defaults 10.42.0.0/16 /
10.43.0.0/16, or fd00:42::/56 / fd00:43::/112 when the node's first IP is IPv6),
``pkg/daemons/control/server.go`` (kube-controller-manager gets allocate-node-cidrs=true and the
cluster-cidr; ``--kube-controller-manager-arg`` overrides); rancher/rke2 ``pkg/cli/cmds/server.go``
(cluster-cidr and service-cidr are k3s's flags, copied).
"""

from __future__ import annotations

import ipaddress
import json

import pytest

from webhook.core.cidrsource import SourceKind
from webhook.core.nodeargs import from_node, from_nodes, is_server
from webhook.core.resolve import resolution_from

CP = {"node-role.kubernetes.io/control-plane": "true", "node-role.kubernetes.io/master": "true"}


def node(name, args, *, program="k3s", labels=CP, addresses=None, raw=None):
    meta = {"name": name, "labels": dict(labels),
            "annotations": {f"{program}.io/node-args": raw if raw is not None else json.dumps(args)}}
    out = {"metadata": meta}
    if addresses:
        out["status"] = {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]}
    return out


def nets(*texts):
    return tuple(ipaddress.ip_network(t) for t in texts)


@pytest.mark.parametrize("args, want", [
    (["server", "--cluster-cidr", "10.50.0.0/16"], ("10.50.0.0/16",)),
    (["server", "--cluster-cidr=10.50.0.0/16"], ("10.50.0.0/16",)),  # hand-written, one element
    (["server", "--cluster-cidr", "10.50.0.0/16,fd00:50::/56"], ("10.50.0.0/16", "fd00:50::/56")),
    # a string slice flag: every occurrence adds (config.yaml list, or the flag twice)
    (["server", "--cluster-cidr", "10.50.0.0/16", "--cluster-cidr", "fd00:50::/56"],
     ("10.50.0.0/16", "fd00:50::/56")),
    (["server"], ("10.42.0.0/16",)),                                  # the default
    ([], ("10.42.0.0/16",)),                                          # no subcommand recorded
    (["server", "--cluster-cidr", ""], ("10.42.0.0/16",)),            # empty is unset
    (["server", "--", "--cluster-cidr", "10.50.0.0/16"], ("10.42.0.0/16",)),  # after "--": not a flag
])
def test_cluster_cidr_explicit_or_default(args, want):
    f = from_node(node("cp1", args))
    assert f is not None and f.cluster_cidr.networks == nets(*want)
    assert f.cluster_cidr.kind is SourceKind.NODE_ARGS
    assert f.allocate_node_cidrs is True


def test_origin_names_distribution_node_and_default():
    explicit = from_node(node("cp1", ["server", "--cluster-cidr", "10.50.0.0/16"], program="rke2"))
    assert explicit.cluster_cidr.origin == "rke2 server node cp1 rke2.io/node-args --cluster-cidr"
    default = from_node(node("cp2", ["server"]))
    assert default.cluster_cidr.origin == ("k3s server node cp2: k3s's default cluster-cidr"
                                           " (--cluster-cidr absent from k3s.io/node-args)")
    assert default.describe() == "k3s server node cp2"


@pytest.mark.parametrize("args, addresses, cluster, service", [
    (["server", "--node-ip", "fd00:1::5"], None, "fd00:42::/56", "fd00:43::/112"),
    (["server", "--node-ip", "10.0.0.5,fd00:1::5"], None, "10.42.0.0/16", "10.43.0.0/16"),
    (["server"], ["fd00:1::5"], "fd00:42::/56", "fd00:43::/112"),
    (["server"], ["10.0.0.5"], "10.42.0.0/16", "10.43.0.0/16"),
])
def test_default_follows_the_first_node_ip_family(args, addresses, cluster, service):
    f = from_node(node("cp1", args, addresses=addresses))
    assert f.cluster_cidr.networks == nets(cluster)
    assert f.service_cluster_ip_range.networks == nets(service)


def test_service_cidr():
    f = from_node(node("cp1", ["server", "--service-cidr", "10.96.0.0/12"]))
    assert f.service_cluster_ip_range.networks == nets("10.96.0.0/12")
    assert f.service_cluster_ip_range.origin.endswith("k3s.io/node-args --service-cidr")
    assert from_node(node("cp1", ["server"])).service_cluster_ip_range.networks == nets("10.43.0.0/16")


@pytest.mark.parametrize("args, masks", [
    (["server", "--kube-controller-manager-arg", "node-cidr-mask-size=25"], (25, None, None)),
    (["server", "--kube-controller-manager-arg=node-cidr-mask-size=25"], (25, None, None)),
    (["server", "--kube-controller-manager-arg", "--node-cidr-mask-size=26"], (26, None, None)),
    (["server", "--kube-controller-manager-arg", "node-cidr-mask-size-ipv4=23",
      "--kube-controller-manager-arg", "node-cidr-mask-size-ipv6=80"], (None, 23, 80)),
    (["server", "--kube-controller-manager-arg", "node-cidr-mask-size=25",
      "--kube-controller-manager-arg", "node-cidr-mask-size=27"], (27, None, None)),  # the last wins
    (["server"], (None, None, None)),
])
def test_node_mask_from_kube_controller_manager_arg(args, masks):
    f = from_node(node("cp1", args))
    assert (f.node_cidr_mask_size, f.node_cidr_mask_size_ipv4, f.node_cidr_mask_size_ipv6) == masks
    assert f.notes == ()


def test_mask_default_and_from_args_in_the_resolution():
    assert (resolution_from(None, [], None, None, servers=[node("cp1", ["server"])]).mask_v4) == 24
    res = resolution_from(None, [], None, None, servers=[node("cp1", [
        "server", "--kube-controller-manager-arg", "node-cidr-mask-size=25"])])
    assert (res.mask_v4, res.mask_v6) == (25, 25)


def test_bad_mask_is_a_note():
    f = from_node(node("cp1", ["server", "--kube-controller-manager-arg", "node-cidr-mask-size=big"]))
    assert f.node_cidr_mask_size is None
    assert any("'big' is not a mask size" in n for n in f.notes)


def test_kcm_arg_cluster_cidr_and_allocate_override():
    f = from_node(node("cp1", ["server", "--cluster-cidr", "10.50.0.0/16",
                               "--kube-controller-manager-arg", "cluster-cidr=10.60.0.0/16",
                               "--kube-controller-manager-arg", "allocate-node-cidrs=false"]))
    assert f.cluster_cidr.networks == nets("10.60.0.0/16")
    assert "--kube-controller-manager-arg=cluster-cidr" in f.cluster_cidr.origin
    assert f.allocate_node_cidrs is False


@pytest.mark.parametrize("n", [
    {"metadata": {"name": "w1", "annotations": {}}},
    {"metadata": {"name": "w1"}},
    {},
    node("w1", ["agent", "--server", "https://cp1:6443", "--token", "********"], labels={}),
])
def test_no_source(n):
    assert from_node(n) is None


@pytest.mark.parametrize("raw, reason", [
    ("not json", "not JSON"),
    ('{"a": 1}', "not a JSON list of strings"),
    ('["server", 7]', "not a JSON list of strings"),
])
def test_unreadable_annotation_is_an_error_not_an_exception(raw, reason):
    f = from_node(node("cp1", None, raw=raw))
    assert f.cluster_cidr.networks == () and reason in f.cluster_cidr.error
    res = resolution_from(None, [], None, None, servers=[node("cp1", None, raw=raw)], flannel_fallback=False)
    assert any("does not parse" in n and "k3s server node cp1" in n for n in res.notes)


def test_unparsable_cidr_keeps_its_reason():
    f = from_node(node("cp1", ["server", "--cluster-cidr", "10.500.0.0/16"]))
    assert f.cluster_cidr.networks == () and f.cluster_cidr.error


def test_servers_first_then_by_name():
    labelled = node("b-cp", ["server", "--cluster-cidr", "10.50.0.0/16"])
    unlabelled = node("a-srv", ["server", "--cluster-cidr", "10.50.0.0/16"], labels={})
    assert is_server(labelled) and not is_server(unlabelled)
    facts, notes = from_nodes([unlabelled, labelled])
    assert [f.pod for f in facts] == ["b-cp", "a-srv"] and notes == []


def test_two_servers_that_disagree_are_a_disagreement():
    a = node("cp1", ["server", "--cluster-cidr", "10.50.0.0/16"])
    b = node("cp2", ["server"])  # the default 10.42.0.0/16
    res = resolution_from(None, [], None, None, servers=[a, b])
    assert not res.agree and res.networks == nets("10.50.0.0/16")
    assert any("cluster-cidr disagreement" in n and "cp2" in n for n in res.notes)


def test_two_servers_with_different_masks_get_a_note():
    a = node("cp1", ["server", "--kube-controller-manager-arg", "node-cidr-mask-size=25"])
    b = node("cp2", ["server"])
    facts, notes = from_nodes([a, b])
    assert len(facts) == 2 and any("node mask sizes differ" in n for n in notes)
    res = resolution_from(None, [], None, None, servers=[a, b])
    assert any("node mask sizes differ" in n for n in res.notes)


def test_a_kube_controller_manager_pod_wins_over_node_args():
    pod = {"metadata": {"namespace": "kube-system", "name": "kcm-cp1",
                        "labels": {"component": "kube-controller-manager"}},
           "spec": {"containers": [{"name": "kube-controller-manager", "command": [
               "kube-controller-manager", "--cluster-cidr=10.244.0.0/16", "--allocate-node-cidrs=true"]}]}}
    res = resolution_from(None, [pod], None, None, servers=[node("cp1", ["server"])])
    assert res.networks == nets("10.244.0.0/16")
    assert [s.kind for s in res.sources] == [SourceKind.CONTROLLER_MANAGER, SourceKind.NODE_ARGS]


def test_k3s_service_range_and_overlap():
    res = resolution_from(None, [], None, None, servers=[node("cp1", [
        "server", "--cluster-cidr", "10.42.0.0/16", "--service-cidr", "10.42.128.0/17"])])
    assert res.service.networks == nets("10.42.128.0/17")
    assert any("overlaps service range" in n for n in res.notes)


def test_a_huge_list_is_read_up_to_a_bound():
    args = ["server", *(["--disable", "traefik"] * 5000), "--cluster-cidr", "10.50.0.0/16"]
    f = from_node(node("cp1", args))
    assert f.cluster_cidr.networks == nets("10.42.0.0/16")  # beyond the bound: not read

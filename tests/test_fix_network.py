"""--fix-network: Network / IPv6Network corrected in place, every other byte of net-conf.json kept."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import FIXTURES, make_view

from webhook.core.rules.fixnetwork import fix_network, replace_top_level_value


def configmap(text: str) -> dict:
    cm = yaml.safe_load((FIXTURES / "kube-flannel-cfg.yaml").read_text())
    cm["data"]["net-conf.json"] = text
    return cm


UPSTREAM = yaml.safe_load((FIXTURES / "kube-flannel-cfg.yaml").read_text())["data"]["net-conf.json"]


def test_upstream_net_conf_gets_the_cluster_cidr_and_nothing_else_changes():
    fix = fix_network(configmap(UPSTREAM), make_view("172.18.0.0/16", source="kubeadm-config"))
    assert fix is not None
    [op] = fix.patch
    assert op["op"] == "replace" and op["path"] == "/data/net-conf.json"
    assert op["value"] == UPSTREAM.replace('"10.244.0.0/16"', '"172.18.0.0/16"')
    assert "10.244.0.0/16 corrected to 172.18.0.0/16" in fix.warnings[0]


def test_matching_network_needs_no_fix():
    assert fix_network(configmap(UPSTREAM), make_view("10.244.0.0/16")) is None


def test_the_key_flannel_reads_is_the_one_rewritten():
    # Go's encoding/json: the last case-insensitive match wins.
    text = ('{"Network": "10.1.0.0/16", "network" : "10.244.0.0/16",'
            ' "Backend": {"Type": "vxlan", "Network": "x"}}')
    fix = fix_network(configmap(text), make_view("172.18.0.0/16"))
    assert fix is not None
    assert fix.patch[0]["value"] == ('{"Network": "10.1.0.0/16", "network" : "172.18.0.0/16", '
                                     '"Backend": {"Type": "vxlan", "Network": "x"}}')


def test_dual_stack_rewrites_both():
    text = json.dumps({"EnableIPv6": True, "Network": "10.244.0.0/16", "IPv6Network": "fd00::/56",
                       "Backend": {"Type": "vxlan"}}, indent=4)
    fix = fix_network(configmap(text), make_view("172.18.0.0/16,fd00:18::/56"))
    assert fix is not None
    new = json.loads(fix.patch[0]["value"])
    assert new["Network"] == "172.18.0.0/16" and new["IPv6Network"] == "fd00:18::/56"
    assert len(fix.warnings) == 2


@pytest.mark.parametrize("view", [
    make_view(None),                                              # cluster-cidr unknown
    make_view("172.18.0.0/16", nodes={"w": ["10.244.1.0/24"]}),  # would strand a node
])
def test_never_rewrites_when_unknown_or_stranding(view):
    assert fix_network(configmap(UPSTREAM), view) is None


def test_never_rewrites_when_sources_disagree():
    from dataclasses import replace

    view = replace(make_view("172.18.0.0/16"), disputed=True)
    assert fix_network(configmap(UPSTREAM), view) is None


@pytest.mark.parametrize("text", ["{not json", "[]", '{"Backend": {"Type": "vxlan"}}'])
def test_unparsable_or_absent_network_is_left_to_the_validator(text):
    assert fix_network(configmap(text), make_view("172.18.0.0/16")) is None


def test_replace_top_level_value_handles_escapes_and_nesting():
    text = '{ "a\\"b": {"Network": 1}, "Network":"10.0.0.0/8" }'
    assert replace_top_level_value(text, "Network", "1.2.0.0/16") == \
        '{ "a\\"b": {"Network": 1}, "Network":"1.2.0.0/16" }'
    assert replace_top_level_value("{}", "Network", "x") is None

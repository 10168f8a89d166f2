"""net-conf.json's IP families as flannel v0.26-v0.28 runs them, and the backends IPv6-only cannot run.

Upstream (flannel-io/flannel, read at v0.28.9's tree):
* pkg/subnet/kube/kube.go AcquireLease: since v0.28.0 (commit 80e1e42f) an empty Network
  (ip.IP4Net.Empty: absent or 0.0.0.0/0) fails a node with an IPv4 podCIDR, and IPv6Network
  is checked only with EnableIPv6;
* pkg/ipmatch/match.go: IPv6-only, ExtAddr stays nil; pkg/backend/{udp/udp_amd64,ipip/ipip,
  ipsec/ipsec,alloc/alloc,tencentvpc/tencentvpc}.go RegisterNetwork call ip.FromIP(ExtAddr),
  which panics (pkg/ip/ipnet.go FromIP: "Address is not an IPv4 address");
* pkg/subnet/config.go Config: EnableNFTables is a field (kubespray#13291 sets it).
k3s (pkg/agent/flannel/setup.go) writes 0.0.0.0/0 or ::/0 for the family it turns off.
"""

from __future__ import annotations

import json

import pytest

from webhook.core.rules import Severity
from webhook.core.rules.backends import IPV4_ADDRESS_BACKENDS
from webhook.core.rules.flannel import parse_net_conf

V6 = "fd00:10:244::/56"


def verdict(doc: dict) -> tuple[set[str], set[str], list]:
    res = parse_net_conf(json.dumps(doc))
    return ({f.code for f in res.findings if f.severity is Severity.ERROR},
            {f.code for f in res.findings if f.severity is Severity.WARNING}, res.findings)


def backend(kind: str) -> dict:
    extra = {"ipsec": {"PSK": "a" * 96}, "tencent-vpc": {}, "alloc": {}}.get(kind, {})
    return {"Type": kind, **extra}


@pytest.mark.parametrize("kind", sorted(IPV4_ADDRESS_BACKENDS))
def test_ipv6_only_refuses_the_backends_that_need_an_ipv4_address(kind):
    errors, _, findings = verdict({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": V6,
                                   "Backend": backend(kind)})
    assert errors == {"IPv6OnlyBackend"}, findings
    (f,) = [f for f in findings if f.code == "IPv6OnlyBackend"]
    assert "ip.FromIP" in f.detail and "pkg/ipmatch/match.go" in f.detail
    assert f.fix.startswith("use one of host-gw, vxlan, wireguard")


@pytest.mark.parametrize("kind", ["vxlan", "host-gw", "wireguard"])
def test_ipv6_only_runs_on_the_dual_stack_backends(kind):
    errors, warnings, _ = verdict({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": V6,
                                   "Backend": {"Type": kind}})
    assert errors == set() and warnings == set()


@pytest.mark.parametrize("kind", sorted(IPV4_ADDRESS_BACKENDS - {"udp"}))
def test_with_ipv4_on_the_same_backends_only_lose_ipv6(kind):
    errors, warnings, _ = verdict({"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": V6,
                                   "Backend": backend(kind)})
    assert errors == set() and "NoIPv6Backend" in warnings


@pytest.mark.parametrize("doc", [
    {"Network": "0.0.0.0/0", "Backend": {"Type": "vxlan"}},
    {"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "::/0", "Backend": {"Type": "vxlan"}},
])
def test_an_empty_network_for_an_enabled_family_fails_since_v0_28(doc):
    errors, _, findings = verdict(doc)
    assert errors == {"EmptyNetwork"}
    (f,) = [f for f in findings if f.code == "EmptyNetwork"]
    assert "80e1e42f" in f.detail and "older versions ran" in f.detail


def test_an_absent_network_says_which_versions_fail():
    errors, _, findings = verdict({"Backend": {"Type": "vxlan"}})
    assert errors == {"MissingNetwork"}
    assert "since v0.28.0, commit 80e1e42f" in findings[0].detail


@pytest.mark.parametrize("doc", [
    # k3s, IPv6-only: the IPv4 placeholder with EnableIPv4 off
    {"Network": "0.0.0.0/0", "EnableIPv4": False, "EnableIPv6": True, "IPv6Network": V6,
     "Backend": {"Type": "vxlan"}},
    # k3s, IPv4-only: the IPv6 placeholder with EnableIPv6 off
    {"Network": "10.42.0.0/16", "EnableIPv6": False, "IPv6Network": "::/0", "Backend": {"Type": "vxlan"}},
])
def test_k3s_placeholders_for_a_disabled_family_are_not_findings(doc):
    assert verdict(doc)[:2] == (set(), set())


def test_another_network_for_a_disabled_family_is_still_said_to_be_ignored():
    _, warnings, _ = verdict({"Network": "10.42.0.0/16", "IPv6Network": V6, "Backend": {"Type": "vxlan"}})
    assert warnings == {"IgnoredNetwork"}


@pytest.mark.parametrize(("value", "errors"), [(True, set()), (False, set()), ("true", {"InvalidField"})])
def test_enable_nftables_is_a_known_boolean_key(value, errors):
    got_errors, warnings, _ = verdict({"Network": "10.244.0.0/16", "EnableNFTables": value,
                                       "Backend": {"Type": "vxlan"}})
    assert got_errors == errors and not {w for w in warnings if "Unknown" in w}

"""Strict CIDR parsing and the node overlap index (shape: adjacent, nested, identical, both families)."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.core.cidr import CidrError, parse_cidr, parse_cidr_list, within
from webhook.core.nodeindex import NodeCidrIndex


@pytest.mark.parametrize("text", [
    "", " 10.0.0.0/8", "10.0.0.0/8 ", "10.0.0.0 /8", "10.0.0.0", "10.0.0.0/33", "10.0.0.0/-1",
    "10.0.0.0/8/8", "010.0.0.0/8", "fe80::1%eth0/64", "::ffff:10.0.0.0/104", "fd00::/129", "x/8",
    "10.0.0.0/+8", "10.0.0.0/0x8",
])
def test_parse_cidr_refuses_what_go_or_kubernetes_read_differently(text):
    with pytest.raises(CidrError):
        parse_cidr(text)


@pytest.mark.parametrize(("text", "network", "host_bits"), [
    ("10.244.0.0/16", "10.244.0.0/16", False),
    ("192.168.5.0/16", "192.168.0.0/16", True),
    ("fd00:10:244::/56", "fd00:10:244::/56", False),
    ("FD00:10:244::1/56", "fd00:10:244::/56", True),
])
def test_parse_cidr_normalises_and_reports_host_bits(text, network, host_bits):
    parsed = parse_cidr(text)
    assert str(parsed.network) == network
    assert parsed.host_bits_set is host_bits


@pytest.mark.parametrize(("text", "ok"), [
    ("10.244.0.0/16", True),
    ("10.244.0.0/16,fd00::/56", True),
    ("fd00::/56,10.244.0.0/16", True),
    ("10.244.0.0/16,10.245.0.0/16", False),  # two of one family
    ("10.244.0.0/16,fd00::/56,10.1.0.0/16", False),
    ("10.244.1.0/16", False),  # host bits in a cluster-cidr
    ("10.244.0.0/16,", False),
])
def test_parse_cidr_list_follows_kube_controller_manager(text, ok):
    if ok:
        assert len(parse_cidr_list(text)) in (1, 2)
    else:
        with pytest.raises(CidrError):
            parse_cidr_list(text)


N = ipaddress.ip_network


@pytest.mark.parametrize(("stored", "query", "hits"), [
    ({"a": "10.0.1.0/24"}, "10.0.1.0/24", ["a"]),          # identical
    ({"a": "10.0.1.0/24"}, "10.0.2.0/24", []),             # adjacent above
    ({"a": "10.0.1.0/24"}, "10.0.0.0/24", []),             # adjacent below
    ({"a": "10.0.1.0/24"}, "10.0.0.0/16", ["a"]),          # query contains
    ({"a": "10.0.0.0/16"}, "10.0.1.0/24", ["a"]),          # query inside
    ({"a": "10.0.1.0/24"}, "10.0.1.128/25", ["a"]),
    ({"a": "fd00:0:0:1::/64"}, "fd00:0:0:1::/64", ["a"]),
    ({"a": "fd00:0:0:1::/64"}, "fd00:0:0:2::/64", []),
    ({"a": "fd00:0:0:1::/64"}, "fd00::/48", ["a"]),
    ({"a": "fd00::/48"}, "fd00:0:0:1::/64", ["a"]),
    ({"a": "10.0.1.0/24"}, "fd00::/8", []),                # other family
])
def test_overlapping_adjacent_nested_identical_both_families(stored, query, hits):
    index = NodeCidrIndex()
    for node, cidr in stored.items():
        index.set(node, [N(cidr)])
    assert [n for n, _ in index.overlapping(N(query))] == hits


def test_remove_frees_and_set_replaces():
    index = NodeCidrIndex()
    index.set("a", [N("10.0.1.0/24")])
    index.set("a", [N("10.0.2.0/24")])
    assert index.overlapping(N("10.0.1.0/24")) == []
    index.remove("a")
    index.remove("a")  # idempotent
    assert index.overlapping(N("10.0.2.0/24")) == [] and len(index) == 0


def test_first_free_skips_occupied_runs():
    index = NodeCidrIndex()
    for i in range(5):
        index.set(f"n{i}", [N(f"10.0.{i}.0/24")])
    index.set("big", [N("10.0.8.0/22")])
    assert index.first_free(N("10.0.0.0/16"), 24) == N("10.0.5.0/24")
    for i in (5, 6, 7):
        index.set(f"m{i}", [N(f"10.0.{i}.0/24")])
    assert index.first_free(N("10.0.0.0/16"), 24) == N("10.0.12.0/24")
    assert index.first_free(N("10.0.0.0/23"), 24) is None


def test_outside_counts_per_family():
    index = NodeCidrIndex()
    index.set("in", [N("10.244.1.0/24"), N("fd00::/64")])
    index.set("out", [N("10.99.1.0/24")])
    count, sample = index.outside([N("10.244.0.0/16")])
    assert count == 1 and sample == [("out", N("10.99.1.0/24"))]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(22, 26)), max_size=30),
       st.integers(0, 255), st.integers(20, 28))
def test_overlapping_agrees_with_brute_force(entries, q_third, q_len):
    index = NodeCidrIndex()
    nets = {}
    for i, (third, plen) in enumerate(entries):
        net = N(f"10.0.{third}.0/{plen}", strict=False)
        nets[f"n{i}"] = net
        index.set(f"n{i}", [net])
    query = N(f"10.0.{q_third}.0/{q_len}", strict=False)
    expected = sorted(n for n, net in nets.items() if net.overlaps(query))
    got = sorted(n for n, _ in index.overlapping(query, limit=10_000))
    assert got == expected


def test_ipv6_cidrs_near_zero_stay_ipv6():
    # ipaddress.ip_network((small_int, n)) reads IPv4; the index must keep the family.
    index = NodeCidrIndex()
    index.set("a", [N("::/64")])
    assert index.overlapping(N("::/48")) == [("a", N("::/64"))]
    assert index.first_free(N("::/56"), 64) == N("0:0:0:1::/64")
    assert index.outside([N("fd00::/8")]) == (1, [("a", N("::/64"))])


def test_a_shared_cidr_keeps_every_owner_until_the_last_leaves():
    index = NodeCidrIndex()
    for name in ("a", "b", "c"):
        index.set(name, [N("10.0.1.0/24")])
    assert [n for n, _ in index.overlapping(N("10.0.1.0/24"))] == ["a", "b", "c"]
    assert index.outside([N("10.9.0.0/16"), N("10.8.0.0/16")]) == (
        3, [("a", N("10.0.1.0/24")), ("b", N("10.0.1.0/24")), ("c", N("10.0.1.0/24"))])
    index.remove("b")
    index.remove("a")
    assert index.overlapping(N("10.0.1.0/24")) == [("c", N("10.0.1.0/24"))]
    assert index.outside([N("10.9.0.0/16")]) == (1, [("c", N("10.0.1.0/24"))])
    index.remove("c")
    assert index.overlapping(N("10.0.0.0/8")) == []


_NETS = st.one_of(
    st.builds(lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
              st.integers(0, 2**32 - 1), st.integers(0, 32)),
    st.builds(lambda a, p: ipaddress.IPv6Network((a, p), strict=False),
              st.integers(0, 2**128 - 1), st.integers(0, 128)),
)


@settings(max_examples=2000)
@given(_NETS, _NETS, st.booleans())
def test_within_is_ipaddress_subnet_of(a, b, nested):
    if nested and a.version == b.version and a.prefixlen >= b.prefixlen:
        b = a.supernet(new_prefix=b.prefixlen)  # make containment common, not a 1-in-2^n accident
    want = a.version == b.version and a.subnet_of(b)
    assert within(a, b) is want


_TEXTS = st.one_of(
    _NETS.map(str),
    st.builds(lambda n, h: f"{n.network_address + h % n.num_addresses}/{n.prefixlen}", _NETS, st.integers(0)),
    st.text(alphabet="0123456789abcdef.:/% x", max_size=50),
)


@settings(max_examples=2000)
@given(st.lists(_TEXTS, min_size=1, max_size=8))
def test_a_kept_parse_is_the_parse_itself(texts):
    """parse_cidr keeps the last 4,096 texts that parsed: asked again, it answers as a fresh parse does."""
    from webhook.core.cidr import _parse

    fresh = _parse.__wrapped__
    for text in texts + texts:  # the second time round, from what was kept
        try:
            want = fresh(text)
        except CidrError as e:
            with pytest.raises(CidrError, match=re.escape(str(e))):
                parse_cidr(text)
        else:
            assert parse_cidr(text) == want


def test_only_parses_are_kept_and_the_kept_are_bounded():
    from webhook.core.cidr import _parse

    _parse.cache_clear()
    for i in range(5000):
        parse_cidr(f"10.{i // 256}.{i % 256}.0/24")
        with pytest.raises(CidrError):
            parse_cidr(f"10.0.0.{i}/24 ")  # refused: never kept
    assert _parse.cache_info().currsize == _parse.cache_info().maxsize == 4096
    with pytest.raises(CidrError, match="expected a CIDR string"):
        parse_cidr(["10.0.0.0/8"])  # not hashable, not a string: refused before the cache



# Go's net.ParseCIDR reads the prefix length with dtoi (src/net/parse.go, src/net/ip.go ParseCIDR):
# decimal digits, leading zeros allowed; the address with netip.ParseAddr (no leading-zero octet).
# Checked by hand with go1.19 (`go run` of net.ParseCIDR): the same verdicts. flannel reads
# net-conf.json's Network so (pkg/ip ParseIP4Net); Kubernetes' CEL cidr() (netip.ParsePrefix) does
# not, so only net-conf.json is read as Go reads it.
@pytest.mark.parametrize(("text", "network"), [
    ("10.244.0.0/0016", "10.244.0.0/16"),
    ("10.244.0.0/0000000000016", "10.244.0.0/16"),
])
def test_a_flannel_network_with_a_zero_padded_prefix_is_read_as_go_reads_it(text, network):
    from webhook.core.rules.flannel import parse_net_conf

    result = parse_net_conf(json.dumps({"Network": text, "Backend": {"Type": "vxlan"}}))
    assert result.conf is not None and not [f for f in result.findings if f.severity.name == "ERROR"]
    assert result.conf.network.network == ipaddress.ip_network(network)


def test_a_zero_padded_ipv6_network_is_read_too():
    from webhook.core.rules.flannel import parse_net_conf

    result = parse_net_conf('{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/056",'
                            ' "Backend": {"Type": "vxlan"}}')
    assert result.conf is not None and result.conf.ipv6_network.network == ipaddress.ip_network("fd00::/56")


@pytest.mark.parametrize("text", ["10.244.0.0/+16", "10.244.0.0/033", "010.244.0.0/16", "10.244.0.0/",
                                  "10.244.0.0/16 "])
def test_what_go_refuses_flannel_refuses(text):
    from webhook.core.rules.flannel import parse_net_conf

    result = parse_net_conf(json.dumps({"Network": text, "Backend": {"Type": "vxlan"}}))
    assert result.conf is None and any("invalid CIDR address" in f.summary for f in result.findings)


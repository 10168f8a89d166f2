"""net-conf.json read as flannel reads it (flannel-io/flannel pkg/subnet/config.go, pkg/ip, pkg/backend)."""

from __future__ import annotations

import json

import pytest

from webhook.core.rules import backends, flannel, gojson
from webhook.core.rules.findings import Severity
from webhook.core.rules.flannel import NET_CONF_MAX_BYTES, check_network_config, parse_net_conf


def test_public_names_are_pinned() -> None:
    """net-conf.json is read by ParseConfig (flannel), the Backend's decoding and Go's encoding/json."""
    assert sorted(flannel.__all__) == sorted([
        "NET_CONF_MAX_BYTES", "NetConf", "NetConfResult", "check_network_config", "parse_net_conf",
    ])
    assert sorted(backends.__all__) == sorted([
        "BACKENDS", "DUAL_STACK_BACKENDS", "IPSEC_MIN_PSK", "IPV4_ADDRESS_BACKENDS", "VNI_MAX",
        "WIREGUARD_MODES", "decode_backend", "udp_unsupported",
    ])
    assert all(hasattr(module, name) for module in (flannel, backends, gojson) for name in module.__all__)


def codes(text: str, arch: str = "amd64") -> tuple[set[str], set[str]]:
    res = parse_net_conf(text, arch=arch)
    errs = {f.code for f in res.findings if f.severity is Severity.ERROR}
    warns = {f.code for f in res.findings if f.severity is Severity.WARNING}
    return errs, warns


VXLAN = '"Backend": {"Type": "vxlan"}'

# (id, text, errors expected, warnings expected)  — exact sets, so nothing extra slips in.
CASES = [
    # config.go ParseConfig: EnableIPv4 defaults true; kube-flannel.yml's own content is clean.
    ("upstream-default", '{"Network": "10.244.0.0/16", "EnableNFTables": false, ' + VXLAN + "}",
     set(), set()),
    # config.go parseBackendType: no Backend -> "udp".
    ("no-backend-means-udp", '{"Network": "10.244.0.0/16"}', set(), {"DefaultUDPBackend"}),
    # pkg/backend/manager.go GetBackend lower-cases the type.
    ("backend-type-case-insensitive", '{"Network": "10.244.0.0/16", "Backend": {"Type": "VXLAN"}}',
     set(), set()),
    # manager.go: "unknown backend type".
    ("unknown-backend", '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlam"}}',
     {"UnknownBackend"}, set()),
    # parseBackendType: Backend null decodes to Type "" -> unknown backend type "".
    ("backend-null", '{"Network": "10.244.0.0/16", "Backend": null}', {"UnknownBackend"}, set()),
    ("backend-string", '{"Network": "10.244.0.0/16", "Backend": "vxlan"}', {"InvalidBackend"}, set()),
    ("backend-type-number", '{"Network": "10.244.0.0/16", "Backend": {"Type": 1}}',
     {"InvalidBackend"}, set()),
    # Go encoding/json: keys match fields case-insensitively.
    ("lowercase-key-is-read", '{"network": "10.244.0.0/16", ' + VXLAN + "}", set(), {"KeyCase"}),
    # Go encoding/json: the last duplicate wins (both warn; the value is the last one).
    ("duplicate-key", '{"Network": "10.0.0.0/16", "Network": "10.244.0.0/16", ' + VXLAN + "}",
     set(), {"DuplicateKey"}),
    ("unknown-key-typo", '{"Netwrok": "10.244.0.0/16", ' + VXLAN + "}",
     {"MissingNetwork"}, {"UnknownKey"}),
    # pkg/ip/ipnet.go IP4Net.UnmarshalJSON: net.ParseCIDR, then To4 check.
    ("network-not-cidr", '{"Network": "10.244.0.0", ' + VXLAN + "}", {"InvalidField"}, set()),
    ("network-ipv6-in-Network", '{"Network": "fd00::/48", ' + VXLAN + "}", {"InvalidField"}, set()),
    ("network-with-space", '{"Network": "10.244.0.0/16 ", ' + VXLAN + "}", {"InvalidField"}, set()),
    ("network-leading-zero", '{"Network": "10.244.00.0/16", ' + VXLAN + "}", {"InvalidField"}, set()),
    ("network-zone-id", '{"Network": "fe80::%eth0/64", "EnableIPv6": true, ' + VXLAN + "}",
     {"InvalidField"}, set()),
    ("network-number", '{"Network": 10, ' + VXLAN + "}", {"InvalidField"}, set()),
    # Go hands null to a custom UnmarshalJSON: ParseCIDR("null") fails.
    ("network-null", '{"Network": null, ' + VXLAN + "}", {"InvalidField"}, set()),
    # ipnet.go: host bits are silently masked by flannel; we refuse and show the network.
    ("host-bits-set", '{"Network": "192.168.5.0/16", ' + VXLAN + "}", {"HostBitsSet"}, set()),
    # Go: bool fields take JSON booleans only.
    ("enable-ipv6-string", '{"Network": "10.244.0.0/16", "EnableIPv6": "true", ' + VXLAN + "}",
     {"InvalidField"}, set()),
    # Go: uint takes an integer literal; 24.0 and -1 are refused.
    ("subnetlen-float", '{"Network": "10.244.0.0/16", "SubnetLen": 24.0, ' + VXLAN + "}",
     {"InvalidField"}, set()),
    ("subnetlen-negative", '{"Network": "10.244.0.0/16", "SubnetLen": -1, ' + VXLAN + "}",
     {"InvalidField"}, set()),
    # A plain field given null keeps its default.
    ("subnetlen-null-is-default", '{"Network": "10.244.0.0/16", "SubnetLen": null, ' + VXLAN + "}",
     set(), {"IgnoredInKubeMode"}),
    # kube mode ignores SubnetLen/Min/Max (field reports #6; flannel#847, #1328).
    ("subnetlen-ignored-in-kube-mode", '{"Network": "10.244.0.0/16", "SubnetLen": 26, ' + VXLAN + "}",
     set(), {"IgnoredInKubeMode"}),
    # CheckNetworkConfig (etcd mode only): /29 is too small; kube mode admits with a warning.
    ("etcd-mode-too-small", '{"Network": "10.244.0.0/29", ' + VXLAN + "}",
     set(), {"EtcdModeWouldRefuse"}),
    ("subnetmin-not-ip", '{"Network": "10.244.0.0/16", "SubnetMin": "x", ' + VXLAN + "}",
     {"InvalidField"}, set()),
    # pkg/ipmatch/match.go GetIPFamily: "none defined stack".
    ("no-family", '{"EnableIPv4": false, ' + VXLAN + "}", {"NoIPFamily"}, set()),
    ("ipv6-enabled-without-network", '{"Network": "10.244.0.0/16", "EnableIPv6": true, ' + VXLAN + "}",
     {"MissingNetwork"}, set()),
    ("dual-stack", '{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", '
     + VXLAN + "}", set(), set()),
    ("ipv6-only", '{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", '
     + VXLAN + "}", set(), set()),
    ("ipv6network-ignored-when-disabled", '{"Network": "10.244.0.0/16", "IPv6Network": "fd00::/56", '
     + VXLAN + "}", set(), {"IgnoredNetwork"}),
    # pkg/subnet/kube/kube.go: only vxlan, host-gw and wireguard carry IPv6.
    ("ipv6-on-ipip", '{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56", '
     '"Backend": {"Type": "ipip"}}', set(), {"NoIPv6Backend"}),
    # pkg/backend/vxlan/vxlan.go VXLANConfig: VNI int, Port int, GBP bool, DirectRouting bool.
    ("vxlan-fields-ok", '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 4096, '
     '"Port": 8472, "GBP": true, "DirectRouting": true, "MTU": 1400}}', set(), set()),
    ("vxlan-vni-string", '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": "1"}}',
     {"InvalidBackend"}, set()),
    ("vxlan-directrouting-string", '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", '
     '"DirectRouting": "yes"}}', {"InvalidBackend"}, set()),
    ("vxlan-vni-too-big", '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 16777216}}',
     {"InvalidBackend"}, set()),
    # flannel starts with these: netlink sets IFLA_VXLAN_PORT only when Port > 0, as a uint16.
    ("vxlan-port-out-of-range", '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", '
     '"Port": 70000}}', set(), {"PortOutOfRange"}),
    ("vxlan-port-negative", '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", '
     '"Port": -1}}', set(), {"PortOutOfRange"}),
    ("vxlan-unknown-field", '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VINI": 2}}',
     set(), {"UnknownKey"}),
    # pkg/backend/ipsec/ipsec.go: minPasswordLength = 96.
    ("ipsec-short-psk", '{"Network": "10.244.0.0/16", "Backend": {"Type": "ipsec", "PSK": "short"}}',
     {"InvalidBackend"}, set()),
    ("ipsec-good-psk", '{"Network": "10.244.0.0/16", "Backend": {"Type": "ipsec", "PSK": "'
     + "a" * 96 + '"}}', set(), set()),
    # Go's len() counts bytes: 48 two-byte characters are 96 bytes.
    ("ipsec-psk-96-bytes-in-48-chars", '{"Network": "10.244.0.0/16", "Backend": {"Type": "ipsec", "PSK": "'
     + "é" * 48 + '"}}', set(), set()),
    # pkg/backend/wireguard/device.go: wgtypes.ParseKey, "could not parse psk".
    ("wireguard-psk-not-a-key", '{"Network": "10.244.0.0/16", "Backend": {"Type": "wireguard", '
     '"PSK": "hunter2"}}', {"InvalidBackend"}, set()),
    ("wireguard-psk-a-key", '{"Network": "10.244.0.0/16", "Backend": {"Type": "wireguard", '
     '"PSK": "' + "A" * 43 + '="}}', set(), set()),
    # pkg/backend/manager.go: strings.ToLower maps U+0130 to "i".
    ("backend-type-dotted-capital-i", '{"Network": "10.244.0.0/16", "Backend": {"Type": "\u0130P\u0130P"}}',
     set(), set()),
    # pkg/ip/ipnet.go UnmarshalJSON: the raw literal, escapes not decoded, goes to net.ParseCIDR.
    ("network-with-an-escape", '{"Network": "10.244.0.0\\/16", "Backend": {"Type": "vxlan"}}',
     {"InvalidField"}, set()),
    # pkg/backend/wireguard/wireguard.go: Mode must be separate, auto, ipv4 or ipv6.
    ("wireguard-bad-mode", '{"Network": "10.244.0.0/16", "Backend": {"Type": "wireguard", '
     '"Mode": "both"}}', {"InvalidBackend"}, set()),
    ("wireguard-keepalive-string", '{"Network": "10.244.0.0/16", "Backend": {"Type": "wireguard", '
     '"PersistentKeepaliveInterval": "25s"}}', {"InvalidBackend"}, set()),
    ("host-gw", '{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}', set(), set()),
]


@pytest.mark.parametrize(("text", "want_errors", "want_warnings"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_net_conf_table(text: str, want_errors: set[str], want_warnings: set[str]) -> None:
    errs, warns = codes(text)
    assert errs == want_errors
    assert warns == want_warnings


@pytest.mark.parametrize(("text", "fragment"), [
    # field report #9 (flannel#1862): a Helm template left MacPrefix: 0E-2A unquoted.
    ('{\n  "Network": "10.244.0.0/16",\n  "Backend": {"Type": "vxlan", "MacPrefix": 0E-2A}\n}',
     "line 3"),
    ('{"Network": "10.244.0.0/16",}', "line 1"),
    ("Network: 10.244.0.0/16", "line 1"),
    ('{"Network": NaN}', "NaN"),
    ("[" * 2000 + "]" * 2000, "nested too deeply"),  # within NET_CONF_MAX_BYTES
])
def test_not_json_is_refused_with_the_position(text: str, fragment: str) -> None:
    res = parse_net_conf(text)
    assert res.conf is None
    [finding] = res.findings
    assert finding.code == "NetConfNotJSON"
    assert fragment in finding.text()


@pytest.mark.parametrize("text", ["[]", '"x"', "42", "true"])
def test_top_level_must_be_an_object(text: str) -> None:
    # Go: cannot unmarshal array/string/number/bool into Go value of type subnet.Config.
    res = parse_net_conf(text)
    assert [f.code for f in res.findings] == ["NetConfNotObject"]


def test_null_document_is_all_defaults_and_so_has_no_network() -> None:
    # Go: unmarshalling null into a struct is a no-op; EnableIPv4 stays true with no Network.
    errs, warns = codes("null")
    assert errs == {"MissingNetwork"}
    assert "DefaultUDPBackend" in warns


def test_last_duplicate_wins_as_in_go() -> None:
    res = parse_net_conf('{"Network": "10.0.0.0/16", "network": "10.244.0.0/16", ' + VXLAN + "}")
    assert res.conf is not None
    assert str(res.conf.network.network) == "10.244.0.0/16"


def test_host_bits_message_shows_the_normalised_value() -> None:
    # field report #3 (platform9/cctl#177): 192.168.5.0/16 silently became 192.168.0.0/16.
    [f] = parse_net_conf('{"Network": "192.168.5.0/16", ' + VXLAN + "}").findings
    assert "192.168.0.0/16" in f.text()
    assert '"Network": "192.168.0.0/16"' in f.fix


def test_udp_on_arm64_is_refused() -> None:
    # field report #10 (flannel#1221): pkg/backend/udp/udp.go, "not supported on this architecture".
    errs, _ = codes('{"Network": "10.244.0.0/16"}', arch="arm64")
    assert errs == {"BackendUnsupported"}
    errs, _ = codes('{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}', arch="arm64")
    assert errs == {"BackendUnsupported"}


def test_unknown_key_suggests_the_right_one() -> None:
    res = parse_net_conf('{"Netwrok": "10.244.0.0/16", ' + VXLAN + "}")
    unknown = next(f for f in res.findings if f.code == "UnknownKey")
    assert 'did you mean "Network"' in unknown.summary


def test_messages_never_echo_unbounded_input() -> None:
    huge = "x" * 1900  # two of them still fit NET_CONF_MAX_BYTES: the values are read
    res = parse_net_conf(json.dumps({"Network": huge, "Backend": {"Type": huge}}))
    assert {f.code for f in res.findings} == {"InvalidField", "UnknownBackend"}
    assert all(len(f.text()) < 1000 for f in res.findings)


def test_a_net_conf_past_the_cap_is_refused_unread_saying_how_big_it_is() -> None:
    text = json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"},
                       "Pad": "x" * NET_CONF_MAX_BYTES})
    [finding] = parse_net_conf(text).findings
    assert finding.code == "NetConfTooLarge" and finding.severity is Severity.ERROR
    assert f"{len(text):,} bytes" in finding.summary and f"{NET_CONF_MAX_BYTES:,}" in finding.summary
    # The cap counts UTF-8 bytes, not characters.
    wide = '{"Network": "10.244.0.0/16", "Pad": "' + "é" * (NET_CONF_MAX_BYTES // 2) + '"}'
    assert len(wide) < NET_CONF_MAX_BYTES
    assert [f.code for f in parse_net_conf(wide).findings] == ["NetConfTooLarge"]


def _filled(piece: str, tail: str = '"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}') -> str:
    """``piece`` (with ``{i}``) repeated as often as fits NET_CONF_MAX_BYTES, then ``tail``."""
    items: list[str] = []
    size = len(tail) + 2
    while size + len(piece.format(i=len(items))) + 1 <= NET_CONF_MAX_BYTES:
        items.append(piece.format(i=len(items)))
        size += len(items[-1]) + 1
    text = "{" + ",".join([*items, tail]) + "}"
    assert len(text) <= NET_CONF_MAX_BYTES
    return text


@pytest.mark.parametrize(("piece", "code", "counted"), [
    pytest.param('"k{i}": 1, "k{i}": 2', "DuplicateKey", "more keys more than once", id="duplicates"),
    pytest.param('"Netwrk{i}": 1', "UnknownKey", "more keys that are not flannel settings",
                 id="near-misses"),
    pytest.param('"network": "10.244.0.0/16"', "KeyCase", "in another case", id="key-case"),
    pytest.param('"Network": "10.{i}.0.0/33"', "InvalidField", "more invalid values", id="invalid"),
])
def test_key_level_reports_name_five_and_count_the_rest(piece: str, code: str, counted: str) -> None:
    """Issue 15: one finding (and one "did you mean") per key made a review quadratic."""
    findings = [f for f in parse_net_conf(_filled(piece)).findings if f.code == code]
    assert len(findings) == 6, [f.summary for f in findings]
    assert counted in findings[-1].summary
    hidden = int(findings[-1].summary.split(" has " if " has " in findings[-1].summary
                                            else " sets ")[1].split()[0].replace(",", ""))
    assert hidden > 50


def test_backend_key_reports_are_bounded_too() -> None:
    keys = ", ".join(f'"VNX{i}": 1' for i in range(300))
    text = '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", ' + keys + "}}"
    findings = [f for f in parse_net_conf(text).findings if f.code == "UnknownKey"]
    assert len(findings) == 6 and "295 more keys the vxlan backend does not read" in findings[-1].summary


def test_a_huge_key_gets_no_did_you_mean() -> None:
    res = parse_net_conf('{"Network": "10.244.0.0/16", "' + "Networ" * 300 + '": 1}')
    [unknown] = [f for f in res.findings if f.code == "UnknownKey"]
    assert "did you mean" not in unknown.summary


def test_an_invalid_early_duplicate_still_fails_as_in_go_even_when_its_text_repeats() -> None:
    # Go decodes every occurrence; flannel's UnmarshalJSON error on the first stops the decode.
    text = '{"Network": "nope", "Network": "nope", "Network": "10.244.0.0/16"}'
    assert "InvalidField" in {f.code for f in parse_net_conf(text).findings}
    res = parse_net_conf('{"Network": "10.1.0.0/16", "Network": "10.1.0.0/16", "Network": "10.244.0.0/16"}')
    assert res.conf is not None and str(res.conf.network.network) == "10.244.0.0/16"


@pytest.mark.parametrize(("fields", "expected"), [
    # config.go CheckNetworkConfig rows (restated from config_test.go's intent).
    ({"Network": "10.0.0.0/16"}, ""),
    ({"Network": "10.0.0.0/29"}, "Minimum useful network prefix is /28"),
    ({"Network": "10.0.0.0/16", "SubnetLen": 31}, "SubnetLen must be less than /31"),
    ({"Network": "10.0.0.0/16", "SubnetLen": 17}, "at least four subnets"),
    ({"Network": "10.0.0.0/16", "SubnetMin": "10.1.0.0"}, "SubnetMin is not in the range"),
    ({"Network": "10.0.0.0/16", "SubnetMax": "10.0.1.128"}, "SubnetMax is not on a SubnetLen boundary"),
    ({"Network": "10.0.0.0/24", "SubnetMin": "10.0.0.64"}, ""),  # /24 -> SubnetLen 26 by default
    ({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00::/125"},
     "Minimum useful network prefix is /124"),
])
def test_check_network_config_etcd_mode(fields: dict[str, object], expected: str) -> None:
    res = parse_net_conf(json.dumps({**fields, "Backend": {"Type": "vxlan"}}))
    assert res.conf is not None
    got = check_network_config(res.conf)
    assert (expected in got) if expected else got == ""


@pytest.mark.parametrize("unknown", [10, 100])
def test_did_you_mean_is_worked_out_at_most_five_times_per_object(monkeypatch: pytest.MonkeyPatch,
                                                                  unknown: int) -> None:
    """The work is pinned by counting, not timing: difflib runs for the keys shown, not for all."""
    import difflib

    calls = 0
    real = difflib.get_close_matches

    def counted(*args: object, **kwargs: object) -> list[str]:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(difflib, "get_close_matches", counted)
    keys = ", ".join(f'"Netwrk{i}": 1' for i in range(unknown))
    backend = ", ".join(f'"VNX{i}": 1' for i in range(unknown))
    text = '{"Network": "10.244.0.0/16", ' + keys + ', "Backend": {"Type": "vxlan", ' + backend + "}}"
    assert len(text) <= NET_CONF_MAX_BYTES
    parse_net_conf(text)
    assert calls == 10  # five in the config, five in its Backend


def test_ip_fields_are_read_as_flannels_parse_ip4_and_parse_ip6():
    """pkg/ip/ipnet.go ParseIP4 (net.ParseIP, then To4) and ip6net.go ParseIP6 (net.ParseIP),
    each on the raw literal (UnmarshalJSON only trims the quotes)."""
    import ipaddress

    def conf(**fields: str):
        body = ", ".join(f'"{k}": "{v}"' for k, v in fields.items())
        return parse_net_conf('{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network":'
                              ' "fd00::/56", ' + body + ', "Backend": {"Type": "vxlan"}}')

    mapped = conf(SubnetMin="::ffff:10.244.1.0")
    assert mapped.conf is not None and mapped.conf.subnet_min == ipaddress.IPv4Address("10.244.1.0")
    v4_as_v6 = conf(IPv6SubnetMin="10.244.1.0")
    assert v4_as_v6.conf is not None
    assert v4_as_v6.conf.ipv6_subnet_min == ipaddress.IPv6Address("::ffff:10.244.1.0")
    for bad in (r"10.244.1.\u0030", "fe80::1%eth0", "fd00::1"):
        result = conf(SubnetMin=bad)
        assert result.conf is None and any(f.severity is Severity.ERROR for f in result.findings), bad


@pytest.mark.parametrize("limit", [1000, 2500, 10_000])
def test_nesting_verdict_does_not_depend_on_the_recursion_limit(limit: int) -> None:
    """A fixed depth bound (gojson.MAX_DEPTH): celpy raises the interpreter's limit to 2,500 at
    import, and a 2,000-deep text then parsed in one process and not in another."""
    import sys

    from webhook.core.rules.gojson import MAX_DEPTH

    before = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        deep = parse_net_conf("[" * 2000 + "]" * 2000)
        shallow = parse_net_conf("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))
    finally:
        sys.setrecursionlimit(before)
    assert [f.code for f in deep.findings] == ["NetConfNotJSON"]
    assert "nested too deeply" in deep.findings[0].summary
    # Within the bound, parsed as Go's encoding/json parses it (its own bound is 10,000 levels).
    assert [f.code for f in shallow.findings] == ["NetConfNotObject"]


def test_brackets_inside_strings_are_not_nesting() -> None:
    from webhook.core.rules.gojson import MAX_DEPTH, too_deep

    inside = '{"Network": "10.244.0.0/16", "x": "' + "[" * (MAX_DEPTH * 2) + '"}'
    assert not too_deep(inside)
    assert not too_deep('{"a": "\\"' + "{" * (MAX_DEPTH * 2) + '"}')
    assert too_deep("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert parse_net_conf(inside).conf is not None

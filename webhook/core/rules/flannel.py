"""flannel's ``net-conf.json``, read exactly as flannel reads it.

Upstream, flannel-io/flannel:

* ``pkg/subnet/config.go`` ``ParseConfig``: ``encoding/json`` into ``Config``,
  ``EnableIPv4`` defaulting to true, then ``parseBackendType`` (no ``Backend``
  means ``udp``). ``CheckNetworkConfig`` in the same file runs only with the
  local (etcd) subnet manager, never with ``--kube-subnet-mgr``.
* ``pkg/ip/ipnet.go`` / ``ip6net.go``: ``IP4Net``, ``IP6Net``, ``IP4`` and
  ``IP6`` decode themselves by trimming quotes and calling Go's
  ``net.ParseCIDR`` / ``net.ParseIP``; ``IP4Net`` also refuses a non-IPv4 CIDR.
  Host bits are silently masked.
* ``pkg/backend/manager.go``: the backend type is lower-cased and looked up
  among the registered ones (``main.go`` imports alloc, extension, host-gw,
  ipip, ipsec, tencent-vpc, udp, vxlan, wireguard).
* each backend's ``RegisterNetwork`` decodes ``Backend`` into its own struct
  (``pkg/backend/vxlan/vxlan.go`` ``VXLANConfig`` and so on).
* ``pkg/ipmatch/match.go`` ``GetIPFamily``: neither IPv4 nor IPv6 enabled is fatal.
* ``pkg/subnet/kube/kube.go``: only vxlan, host-gw and wireguard carry IPv6.

This module is ``ParseConfig`` and what follows it; the ``Backend`` is decoded in
:mod:`webhook.core.rules.backends`, and both decode as Go's ``encoding/json`` does
(:mod:`webhook.core.rules.gojson`): keys match struct fields case-insensitively
(``"network"`` sets ``Network``), a later duplicate key wins, unknown keys are
ignored, ``null`` leaves a plain field alone but is handed to a custom decoder
(so ``"Network": null`` is an error), integers must be integer literals
(``24.0`` is not a ``uint``), ``NaN`` is not JSON.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from webhook.core.cidr import ParsedCidr
from webhook.core.rules.backends import decode_backend, udp_unsupported
from webhook.core.rules.families import family_findings
from webhook.core.rules.findings import Finding, Severity
from webhook.core.rules.gojson import (
    GoError,
    KeyReport,
    NotJson,
    Pairs,
    did_you_mean,
    duplicates,
    flannel_cidr,
    flannel_ip,
    fold,
    go_bool,
    go_int,
    json_kind,
    loads,
    match_field,
    raw_text,
)

__all__ = [
    "NET_CONF_MAX_BYTES",
    "NetConf",
    "NetConfResult",
    "check_network_config",
    "parse_net_conf",
]

# The size flannel-guard reads net-conf.json up to. kube-flannel.yml's is about 100 bytes and
# a config with every field set, an ipsec PSK and extension commands stays under 2 KiB, but a
# ConfigMap may hold 1 MiB. Past this it is refused unread, so that a review costs a few
# milliseconds whatever the ConfigMap holds (issue 15: 40,000 duplicate keys took 14 s). The
# worst case within the cap (hundreds of distinct CIDRs under one duplicated key, each parsed
# as Go does) is measured in bench/RESULTS.md.
NET_CONF_MAX_BYTES = 4 * 1024

KUBE_MODE_IGNORED = ("SubnetLen", "SubnetMin", "SubnetMax", "IPv6SubnetLen", "IPv6SubnetMin",
                     "IPv6SubnetMax")


@dataclass
class NetConf:
    """The fields flannel reads, with flannel's defaults."""

    enable_ipv4: bool = True
    enable_ipv6: bool = False
    enable_nftables: bool = False
    network: ParsedCidr | None = None
    ipv6_network: ParsedCidr | None = None
    subnet_len: int = 0
    ipv6_subnet_len: int = 0
    subnet_min: ipaddress.IPv4Address | None = None
    subnet_max: ipaddress.IPv4Address | None = None
    ipv6_subnet_min: ipaddress.IPv6Address | None = None
    ipv6_subnet_max: ipaddress.IPv6Address | None = None
    backend_type: str = "udp"
    backend_given: bool = False
    # Fields present in the document (Go field name -> the key as written).
    present: dict[str, str] = field(default_factory=dict)


@dataclass
class NetConfResult:
    """``conf`` is ``None`` when flannel would fail to parse the text at all."""

    conf: NetConf | None
    findings: list[Finding]


def _err(code: str, summary: str, detail: str = "", fix: str = "") -> Finding:
    return Finding(Severity.ERROR, code, summary, detail, fix)


def _warn(code: str, summary: str, detail: str = "", fix: str = "") -> Finding:
    return Finding(Severity.WARNING, code, summary, detail, fix)


# Config's fields: Go name -> (decoder, applies to null?). A decoder that applies to
# null is a custom UnmarshalJSON on a non-pointer type (Go hands it "null").
# A duplicate key is decoded again, as Go does (an invalid early one still fails the whole
# config), but the same text only once per document: (attribute, JSON type, text) -> result.
_Memo = dict[tuple[str, type, str], object]
_Setter = Callable[[NetConf, object, "_Memo | None"], None]


def _set(attr: str, decode: Callable[[object], object]) -> _Setter:
    def setter(conf: NetConf, value: object, memo: _Memo | None = None) -> None:
        if memo is None or not isinstance(value, str):
            setattr(conf, attr, decode(value))
            return
        key = (attr, type(value), raw_text(value))
        if key not in memo:
            try:
                memo[key] = decode(value)
            except GoError as e:
                memo[key] = e
        result = memo[key]
        if isinstance(result, GoError):
            raise result
        setattr(conf, attr, result)

    return setter


_CONFIG_FIELDS: dict[str, tuple[_Setter, bool]] = {
    "EnableIPv4": (_set("enable_ipv4", lambda v: go_bool(v, "Config.EnableIPv4")), False),
    "EnableIPv6": (_set("enable_ipv6", lambda v: go_bool(v, "Config.EnableIPv6")), False),
    "EnableNFTables": (
        _set("enable_nftables", lambda v: go_bool(v, "Config.EnableNFTables")), False),
    "Network": (_set("network", lambda v: flannel_cidr(v, 4)), True),
    "IPv6Network": (_set("ipv6_network", lambda v: flannel_cidr(v, 6)), True),
    "SubnetMin": (_set("subnet_min", lambda v: flannel_ip(v, 4)), True),
    "SubnetMax": (_set("subnet_max", lambda v: flannel_ip(v, 4)), True),
    "IPv6SubnetMin": (_set("ipv6_subnet_min", lambda v: flannel_ip(v, 6)), False),
    "IPv6SubnetMax": (_set("ipv6_subnet_max", lambda v: flannel_ip(v, 6)), False),
    "SubnetLen": (
        _set("subnet_len", lambda v: go_int(v, "Config.SubnetLen", unsigned=True)), False),
    "IPv6SubnetLen": (
        _set("ipv6_subnet_len", lambda v: go_int(v, "Config.IPv6SubnetLen", unsigned=True)),
        False),
    "Backend": (lambda conf, v, memo=None: None, True),  # json.RawMessage: kept raw, decoded below
}



def _parse_error_finding(text: str, err: json.JSONDecodeError) -> Finding:
    # err.lineno counts "\n" only (splitlines() also splits at "\r", "\x0c", ... and drops a
    # last empty line: "{\n" failed there with an IndexError).
    line = text.split("\n")[err.lineno - 1]
    snippet = line[max(0, err.colno - 30): err.colno + 10]
    return _err(
        "NetConfNotJSON",
        f"net-conf.json is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}.",
        f"Near: {snippet!r}. flannel fails at start with 'error parsing subnet config'"
        " and every flannel pod crash-loops.",
        "quote every string value (e.g. a MAC prefix like 0E-2A) and remove trailing commas;"
        " check it with `python3 -m json.tool`.",
    )


def parse_net_conf(text: str, *, arch: str = "amd64") -> NetConfResult:
    """Read ``text`` as flannel's ``ParseConfig`` and the backend's decoding would.

    Errors are what flannel refuses with ``--kube-subnet-mgr``; warnings are
    what it accepts but ignores, masks or defaults in ways that surprise
    people, and what only the etcd-mode ``CheckNetworkConfig`` would refuse.
    """
    findings: list[Finding] = []
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    if size > NET_CONF_MAX_BYTES:
        return NetConfResult(None, [_err(
            "NetConfTooLarge",
            f"net-conf.json is {size:,} bytes; flannel-guard reads at most {NET_CONF_MAX_BYTES:,}.",
            "A flannel config is a few hundred bytes (kube-flannel.yml's is about 100): the"
            " Network, the Backend and a few flags.",
            "keep only the keys flannel reads (Network, IPv6Network, EnableIPv4, EnableIPv6,"
            " Backend, ...) and store anything else elsewhere.",
        )])
    try:
        doc = loads(text)
    except json.JSONDecodeError as e:
        return NetConfResult(None, [_parse_error_finding(text, e)])
    except NotJson as e:
        return NetConfResult(None, [_err("NetConfNotJSON", f"net-conf.json is not valid JSON: {e}.")])
    except RecursionError:
        return NetConfResult(
            None, [_err("NetConfNotJSON", "net-conf.json is nested too deeply to be a flannel config.")]
        )

    conf = NetConf()
    if doc is None:
        # Go: unmarshalling null into a struct is a no-op; every field keeps its default.
        pass
    elif not isinstance(doc, Pairs):
        return NetConfResult(None, [_err(
            "NetConfNotObject",
            f"net-conf.json must be a JSON object, found a JSON {json_kind(doc)}.",
            "flannel fails with 'cannot unmarshal ... into Go value of type subnet.Config'.",
            'write an object such as {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}.',
        )])
    else:
        names = list(_CONFIG_FIELDS)
        folded = fold(names)
        first, duplicated = duplicates(doc, names, folded)
        for dup in first:
            findings.append(_warn(
                "DuplicateKey", f"net-conf.json sets {dup[:40]} more than once; flannel uses the last."))
        if duplicated > len(first):
            findings.append(_warn(
                "DuplicateKey", f"net-conf.json sets {duplicated - len(first):,} more keys more than"
                " once; flannel uses the last of each."))
        keys = KeyReport()
        memo: _Memo = {}
        backend_raw: object = None
        for key, value in doc:
            name = match_field(key, names, folded)
            if name is None:
                if keys.wanted("UnknownKey", "net-conf.json has {} more keys that are not flannel"
                                             " settings (ignored)."):
                    keys.findings.append(_warn(
                        "UnknownKey",
                        f'net-conf.json key "{key[:40]}" is not a flannel setting and is ignored'
                        f"{did_you_mean(key, names)}.",
                    ))
                continue
            if name != key and keys.wanted(
                    "KeyCase", "net-conf.json has {} more keys written in another case than flannel's."):
                keys.findings.append(_warn(
                    "KeyCase", f'net-conf.json key "{key}" is read as "{name}"; write "{name}".'))
            conf.present[name] = key
            setter, takes_null = _CONFIG_FIELDS[name]
            if name == "Backend":
                backend_raw = value
                continue
            if value is None and not takes_null:
                continue
            try:
                setter(conf, value, memo)
            except GoError as e:
                if keys.wanted("InvalidField", "net-conf.json has {} more invalid values.",
                               Severity.ERROR):
                    keys.findings.append(_err(
                        "InvalidField",
                        f"net-conf.json {name} is invalid: {e}.",
                        "flannel refuses the whole config ('error parsing subnet config') and every"
                        " flannel pod crash-loops.",
                    ))
        findings.extend(keys.done())
        if "Backend" in conf.present:
            conf.backend_given = True
            backend_type, found = decode_backend(backend_raw, arch)
            if backend_type is not None:
                conf.backend_type = backend_type
            findings.extend(found)

    if not conf.backend_given:
        findings.append(_warn(
            "DefaultUDPBackend",
            'net-conf.json has no "Backend": flannel falls back to the udp backend.',
            "udp is slow, amd64-only, and has no IPv6.",
            'add "Backend": {"Type": "vxlan"} (what kube-flannel.yml ships).',
        ))
        if arch != "amd64":
            findings.append(udp_unsupported(arch))
    if any(f.severity is Severity.ERROR for f in findings):
        return NetConfResult(None, findings)
    findings.extend(_semantics(conf))
    return NetConfResult(conf, findings)


def _semantics(conf: NetConf) -> list[Finding]:
    """What flannel accepts, but that fails later or surprises (kube mode)."""
    out: list[Finding] = []
    if not conf.enable_ipv4 and not conf.enable_ipv6:
        out.append(_err(
            "NoIPFamily", "net-conf.json enables neither IPv4 nor IPv6.",
            "flannel exits with 'none defined stack' (pkg/ipmatch/match.go).",
            "leave EnableIPv4 at its default (true) or set EnableIPv6: true.",
        ))
    out.extend(family_findings(conf.enable_ipv4, conf.enable_ipv6, conf.network, conf.ipv6_network,
                               conf.backend_type))
    ignored = [k for k in KUBE_MODE_IGNORED if k in conf.present]
    if ignored:
        out.append(_warn(
            "IgnoredInKubeMode",
            f"{', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored with --kube-subnet-mgr;"
            " kube-controller-manager's --node-cidr-mask-size decides each node's subnet.",
        ))
    etcd = check_network_config(conf)
    if etcd:
        out.append(_warn(
            "EtcdModeWouldRefuse",
            f"with the etcd subnet manager flannel would refuse this: {etcd}",
        ))
    return out


def check_network_config(conf: NetConf) -> str:
    """``CheckNetworkConfig`` (pkg/subnet/config.go): etcd mode only. '' when it passes."""
    for enabled, net, slen, smin, smax, bits, default_len, small in (
        (conf.enable_ipv4, conf.network, conf.subnet_len, conf.subnet_min, conf.subnet_max,
         32, 24, 28),
        (conf.enable_ipv6, conf.ipv6_network, conf.ipv6_subnet_len, conf.ipv6_subnet_min,
         conf.ipv6_subnet_max, 128, 64, 124),
    ):
        if not enabled or net is None:
            continue
        plen = net.network.prefixlen
        name = "Network" if bits == 32 else "IPv6Network"
        if slen > 0:
            if slen > bits - 2:
                return f"SubnetLen must be less than /{bits - 1}."
            if slen < plen + 2:
                return "network must be able to accommodate at least four subnets."
        elif plen > small:
            return f"{name} is too small. Minimum useful network prefix is /{small}."
        else:
            slen = default_len if plen <= default_len - 2 else plen + 2
        size = 1 << (bits - slen)
        for label, value in (("SubnetMin", smin), ("SubnetMax", smax)):
            if value is None:
                continue
            if value not in net.network:
                return f"{label} is not in the range of the {name}."
            if int(value) % size:
                return f"{label} is not on a SubnetLen boundary: {value}."
    return ""

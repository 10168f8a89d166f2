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

Go's ``encoding/json`` differs from Python's ``json`` in ways that matter
here, and this module follows Go: keys match struct fields case-insensitively
(``"network"`` sets ``Network``), a later duplicate key wins, unknown keys are
ignored, ``null`` leaves a plain field alone but is handed to a custom decoder
(so ``"Network": null`` is an error), integers must be integer literals
(``24.0`` is not a ``uint``), ``NaN`` is not JSON.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import json
import json.decoder
import json.scanner
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from webhook.core.cidr import CidrError, ParsedCidr, parse_cidr
from webhook.core.rules.findings import Finding, Severity

__all__ = [
    "BACKENDS",
    "DUAL_STACK_BACKENDS",
    "NET_CONF_MAX_BYTES",
    "NetConf",
    "NetConfResult",
    "parse_net_conf",
]

# pkg/backend/*: backend.Register(name, ...) for every backend main.go imports.
BACKENDS = frozenset(
    {"alloc", "extension", "host-gw", "ipip", "ipsec", "tencent-vpc", "udp", "vxlan", "wireguard"}
)
# pkg/subnet/kube/kube.go: "only vxlan, host-gw and wireguard backends support dual stack".
DUAL_STACK_BACKENDS = frozenset({"vxlan", "host-gw", "wireguard"})
# pkg/backend/ipsec/ipsec.go: minPasswordLength.
IPSEC_MIN_PSK = 96
# pkg/backend/wireguard/wireguard.go: the Mode constants.
WIREGUARD_MODES = ("separate", "auto", "ipv4", "ipv6")
# Linux VXLAN: a VNI is 24 bits.
VNI_MAX = (1 << 24) - 1

# The size flannel-guard reads net-conf.json up to. kube-flannel.yml's is about 100 bytes and
# a config with every field set, an ipsec PSK and extension commands stays under 2 KiB, but a
# ConfigMap may hold 1 MiB. Past this it is refused unread, so that a review costs a few
# milliseconds whatever the ConfigMap holds (issue 15: 40,000 duplicate keys took 14 s). The
# worst case within the cap (hundreds of distinct CIDRs under one duplicated key, each parsed
# as Go does) is measured in bench/RESULTS.md.
NET_CONF_MAX_BYTES = 4 * 1024
# Key-level findings (unknown key, duplicate, case) named one by one; the rest are counted.
_MAX_KEY_FINDINGS = 5
# "did you mean" is only worked out for keys this short (difflib is quadratic in length).
_SUGGEST_MAX_KEY = 64

KUBE_MODE_IGNORED = ("SubnetLen", "SubnetMin", "SubnetMax", "IPv6SubnetLen", "IPv6SubnetMin",
                     "IPv6SubnetMax")


class _Number(str):
    """A JSON number kept as its literal text, so Go's integer rules can be applied."""


class _NotJson(ValueError):
    pass


class _GoError(ValueError):
    """What Go's decoder (or flannel's UnmarshalJSON) would return for one value."""


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


def _shown(value: object, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _json_kind(value: object) -> str:
    """The word Go's UnmarshalTypeError uses for a JSON value."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, _Number):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    return "object"


def _reject_constant(name: str) -> object:
    raise _NotJson(f"{name} is not valid JSON")


class _Str(str):
    """A JSON string with its literal as written (``raw``: between the quotes, escapes not decoded).

    Go's ``encoding/json`` hands a custom ``UnmarshalJSON`` the raw bytes of the value, and
    flannel's ``ip.IP4Net``/``ip.IP4``/``ip.IP6`` only trim the quotes (pkg/ip/ipnet.go,
    ip6net.go): ``"10.244.0.0\\/16"`` is parsed with its backslash, and refused.
    """

    raw: str


def _scanstring(s: str, end: int, strict: bool = True) -> tuple[str, int]:
    value, stop = json.decoder.py_scanstring(s, end, strict)  # type: ignore[attr-defined]
    out = _Str(value)
    out.raw = s[end:stop - 1]
    return out, stop


def _decoder() -> json.JSONDecoder:
    decoder = json.JSONDecoder(object_pairs_hook=lambda pairs: _Pairs(pairs), parse_int=_Number,
                               parse_float=_Number, parse_constant=_reject_constant)
    decoder.parse_string = _scanstring  # type: ignore[attr-defined]
    # The pure-Python scanner honours parse_string (net-conf.json is capped at a few KiB).
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


_DECODER = _decoder()


def _loads(text: str) -> object:
    """Parse JSON keeping objects as ordered (key, value) pair lists, numbers as text, and
    each string value's literal (:class:`_Str`).

    Without a backslash in the text every literal is its value: the C scanner, then.
    """
    if "\\" not in text:
        return json.loads(text, object_pairs_hook=lambda pairs: _Pairs(pairs), parse_int=_Number,
                          parse_float=_Number, parse_constant=_reject_constant)
    return _DECODER.decode(text)


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as Go sees it: ordered pairs, duplicates included."""


# --- Go-typed decoders: each returns the decoded value or raises _GoError. ---

def _go_bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise _GoError(f"cannot unmarshal {_json_kind(value)} into Go struct field {where} of type bool")


def _go_int(value: object, where: str, *, unsigned: bool = False) -> int:
    gotype = "uint" if unsigned else "int"
    if isinstance(value, _Number):
        text = str(value)
        try:
            number = int(text, 10)
        except ValueError:
            number = None
        if number is not None and "." not in text and "e" not in text.lower() and (
            not unsigned or not text.startswith("-")
        ) and -(1 << 63) <= number < (1 << 64 if unsigned else 1 << 63):
            return number
        raise _GoError(f"cannot unmarshal number {_shorten(text)} into Go struct field {where} of type"
                       f" {gotype}")
    raise _GoError(
        f"cannot unmarshal {_json_kind(value)} into Go struct field {where} of type {gotype}"
    )


def _go_string(value: object, where: str) -> str:
    if isinstance(value, str) and not isinstance(value, _Number):
        return value
    raise _GoError(f"cannot unmarshal {_json_kind(value)} into Go struct field {where} of type string")


def _raw_text(value: object) -> str:
    """What flannel's UnmarshalJSON sees after ``bytes.Trim(j, "\\"")``: the literal, undecoded."""
    if isinstance(value, _Str):
        return value.raw
    if isinstance(value, str):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def _flannel_cidr(value: object, version: int) -> ParsedCidr:
    """``ip.IP4Net`` / ``ip.IP6Net`` UnmarshalJSON."""
    raw = _raw_text(value)
    try:
        parsed = parse_cidr(raw)
    except CidrError as e:
        raise _GoError(f"invalid CIDR address: {e}") from None
    if parsed.network.version != version:
        want = "IPv4" if version == 4 else "IPv6"
        raise _GoError(f"{_shown(raw)} is not an {want} CIDR")
    return parsed


def _flannel_ip(value: object, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``ip.IP4`` / ``ip.IP6`` UnmarshalJSON (pkg/ip/ipnet.go ``ParseIP4``, ip6net.go ``ParseIP6``).

    Both are Go's ``net.ParseIP`` (no zone id). ``ParseIP4`` then takes ``To4()``, so an
    IPv4-mapped IPv6 address (``::ffff:10.244.1.0``) is its IPv4 address; ``ParseIP6`` takes
    any address, an IPv4 one as its IPv4-mapped form.
    """
    raw = _raw_text(value)
    try:
        if "%" in raw:
            raise ValueError(raw)
        addr = ipaddress.ip_address(raw)
    except ValueError:
        raise _GoError(f"invalid IP address format {_shown(raw)}") from None
    if version == 4:
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is None:
                raise _GoError(f"invalid IPv4 address format {_shown(raw)}")
            return addr.ipv4_mapped
        return addr
    if isinstance(addr, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{addr}")
    return addr


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
        key = (attr, type(value), _raw_text(value))
        if key not in memo:
            try:
                memo[key] = decode(value)
            except _GoError as e:
                memo[key] = e
        result = memo[key]
        if isinstance(result, _GoError):
            raise result
        setattr(conf, attr, result)

    return setter


_CONFIG_FIELDS: dict[str, tuple[_Setter, bool]] = {
    "EnableIPv4": (_set("enable_ipv4", lambda v: _go_bool(v, "Config.EnableIPv4")), False),
    "EnableIPv6": (_set("enable_ipv6", lambda v: _go_bool(v, "Config.EnableIPv6")), False),
    "EnableNFTables": (
        _set("enable_nftables", lambda v: _go_bool(v, "Config.EnableNFTables")), False),
    "Network": (_set("network", lambda v: _flannel_cidr(v, 4)), True),
    "IPv6Network": (_set("ipv6_network", lambda v: _flannel_cidr(v, 6)), True),
    "SubnetMin": (_set("subnet_min", lambda v: _flannel_ip(v, 4)), True),
    "SubnetMax": (_set("subnet_max", lambda v: _flannel_ip(v, 4)), True),
    "IPv6SubnetMin": (_set("ipv6_subnet_min", lambda v: _flannel_ip(v, 6)), False),
    "IPv6SubnetMax": (_set("ipv6_subnet_max", lambda v: _flannel_ip(v, 6)), False),
    "SubnetLen": (
        _set("subnet_len", lambda v: _go_int(v, "Config.SubnetLen", unsigned=True)), False),
    "IPv6SubnetLen": (
        _set("ipv6_subnet_len", lambda v: _go_int(v, "Config.IPv6SubnetLen", unsigned=True)),
        False),
    "Backend": (lambda conf, v, memo=None: None, True),  # json.RawMessage: kept raw, decoded below
}

# Each backend's own config struct (RegisterNetwork): field -> Go kind.
_BACKEND_FIELDS: dict[str, dict[str, str]] = {
    "vxlan": {"VNI": "int", "Port": "int", "MTU": "int", "GBP": "bool", "Learning": "bool",
              "DirectRouting": "bool"},
    "host-gw": {},
    "ipip": {"DirectRouting": "bool"},
    "wireguard": {"ListenPort": "int", "ListenPortV6": "int", "MTU": "int", "PSK": "string",
                  "PersistentKeepaliveInterval": "int", "Mode": "string"},
    "udp": {"Port": "int"},
    "ipsec": {"UDPEncap": "bool", "ESPProposal": "string", "PSK": "string"},
    "extension": {"PreStartupCommand": "string", "PostStartupCommand": "string",
                  "SubnetAddCommand": "string", "SubnetRemoveCommand": "string"},
    "tencent-vpc": {"AccessKeyID": "string", "AccessKeySecret": "string"},
    "alloc": {},
}


def _fold(names: list[str]) -> dict[str, str]:
    """casefold -> the first field of that name (Go's encoding/json takes the first match)."""
    index: dict[str, str] = {}
    for name in names:
        index.setdefault(name.casefold(), name)
    return index


def _match_field(key: str, names: list[str], folded: dict[str, str] | None = None) -> str | None:
    """Go's encoding/json: an exact name first, else a case-insensitive one."""
    if key in names:
        return key
    return (folded if folded is not None else _fold(names)).get(key.casefold())


def _did_you_mean(key: str, names: list[str]) -> str:
    if len(key) > _SUGGEST_MAX_KEY:
        return ""
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class _KeyReport:
    """Key-level findings, at most ``_MAX_KEY_FINDINGS`` of each code, then one count of the rest.

    ``wanted`` is asked first, so that a finding past the cap is never built (a "did you
    mean" costs a difflib run).
    """

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self._counts: dict[str, int] = {}
        self._rest: dict[str, tuple[Severity, str]] = {}

    def wanted(self, code: str, rest: str, severity: Severity = Severity.WARNING) -> bool:
        """Count one more ``code``; ``rest`` (a ``{}`` for the count) sums up those not shown."""
        count = self._counts.get(code, 0) + 1
        self._counts[code] = count
        if count > _MAX_KEY_FINDINGS:
            self._rest[code] = (severity, rest)
            return False
        return True

    def done(self) -> list[Finding]:
        for code, (severity, rest) in self._rest.items():
            hidden = f"{self._counts[code] - _MAX_KEY_FINDINGS:,}"
            self.findings.append(Finding(severity, code, rest.format(hidden)))
        return self.findings


def _duplicates(pairs: _Pairs, names: list[str], folded: dict[str, str]) -> tuple[list[str], int]:
    """The first few keys set more than once (in order), and how many there are; linear."""
    seen: set[str] = set()
    dups: set[str] = set()
    shown: list[str] = []
    for key, _ in pairs:
        name = _match_field(key, names, folded) or key
        if name in seen:
            if name not in dups:
                dups.add(name)
                if len(shown) < _MAX_KEY_FINDINGS:
                    shown.append(name)
        else:
            seen.add(name)
    return shown, len(dups)


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
        doc = _loads(text)
    except json.JSONDecodeError as e:
        return NetConfResult(None, [_parse_error_finding(text, e)])
    except _NotJson as e:
        return NetConfResult(None, [_err("NetConfNotJSON", f"net-conf.json is not valid JSON: {e}.")])
    except RecursionError:
        return NetConfResult(
            None, [_err("NetConfNotJSON", "net-conf.json is nested too deeply to be a flannel config.")]
        )

    conf = NetConf()
    if doc is None:
        # Go: unmarshalling null into a struct is a no-op; every field keeps its default.
        pass
    elif not isinstance(doc, _Pairs):
        return NetConfResult(None, [_err(
            "NetConfNotObject",
            f"net-conf.json must be a JSON object, found a JSON {_json_kind(doc)}.",
            "flannel fails with 'cannot unmarshal ... into Go value of type subnet.Config'.",
            'write an object such as {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}.',
        )])
    else:
        names = list(_CONFIG_FIELDS)
        folded = _fold(names)
        shown, duplicated = _duplicates(doc, names, folded)
        for dup in shown:
            findings.append(_warn(
                "DuplicateKey", f"net-conf.json sets {dup[:40]} more than once; flannel uses the last."))
        if duplicated > len(shown):
            findings.append(_warn(
                "DuplicateKey", f"net-conf.json sets {duplicated - len(shown):,} more keys more than"
                " once; flannel uses the last of each."))
        keys = _KeyReport()
        memo: _Memo = {}
        backend_raw: object = None
        for key, value in doc:
            name = _match_field(key, names, folded)
            if name is None:
                if keys.wanted("UnknownKey", "net-conf.json has {} more keys that are not flannel"
                                             " settings (ignored)."):
                    keys.findings.append(_warn(
                        "UnknownKey",
                        f'net-conf.json key "{key[:40]}" is not a flannel setting and is ignored'
                        f"{_did_you_mean(key, names)}.",
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
            except _GoError as e:
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
            findings.extend(_backend(conf, backend_raw, arch))

    if not conf.backend_given:
        findings.append(_warn(
            "DefaultUDPBackend",
            'net-conf.json has no "Backend": flannel falls back to the udp backend.',
            "udp is slow, amd64-only, and has no IPv6.",
            'add "Backend": {"Type": "vxlan"} (what kube-flannel.yml ships).',
        ))
        if arch != "amd64":
            findings.append(_udp_arch(arch))
    if any(f.severity is Severity.ERROR for f in findings):
        return NetConfResult(None, findings)
    findings.extend(_semantics(conf))
    return NetConfResult(conf, findings)


def _udp_arch(arch: str) -> Finding:
    return _err(
        "BackendUnsupported",
        f"the udp backend does not run on {arch}.",
        "flannel fails with 'UDP backend is not supported on this architecture'"
        " (pkg/backend/udp/udp.go).",
        'use "Backend": {"Type": "vxlan"}.',
    )


def _backend(conf: NetConf, raw: object, arch: str) -> list[Finding]:
    """``parseBackendType`` and the chosen backend's own decoding of ``Backend``."""
    found: list[Finding] = []
    if raw is None:
        btype = ""
        pairs = _Pairs()
    elif not isinstance(raw, _Pairs):
        return [_err(
            "InvalidBackend",
            f"net-conf.json Backend must be an object, found a JSON {_json_kind(raw)}.",
            "flannel fails with 'error decoding Backend property of config'.",
            'write "Backend": {"Type": "vxlan"}.',
        )]
    else:
        pairs = raw
        btype = ""
        for key, value in pairs:
            if _match_field(key, ["Type"]) and value is not None:
                if not isinstance(value, str) or isinstance(value, _Number):
                    return [_err(
                        "InvalidBackend",
                        f"net-conf.json Backend.Type must be a string, found a JSON "
                        f"{_json_kind(value)}.",
                        "flannel fails with 'error decoding Backend property of config'.",
                    )]
                btype = str(value)
    # pkg/backend/manager.go: GetBackend lower-cases the type with Go's strings.ToLower, which
    # maps U+0130 (İ) to "i" (Python's str.lower gives "i" and a combining dot).
    conf.backend_type = btype.replace("\u0130", "i").lower()
    if conf.backend_type not in BACKENDS:
        return [_err(
            "UnknownBackend",
            f"net-conf.json Backend.Type {_shown(btype)} is not a flannel backend"
            f"{_did_you_mean(conf.backend_type, sorted(BACKENDS))}.",
            f"flannel fails with 'unknown backend type'. Known: {', '.join(sorted(BACKENDS))}.",
            'use "Type": "vxlan" unless you know you need another.',
        )]
    if conf.backend_type == "udp" and arch != "amd64":
        found.append(_udp_arch(arch))
    fields = _BACKEND_FIELDS[conf.backend_type]
    names = list(fields)
    folded = _fold(names)
    values: dict[str, object] = {}
    keys = _KeyReport()
    for key, value in pairs:
        if _match_field(key, ["Type"]):
            continue
        name = _match_field(key, names, folded)
        if name is None:
            if keys.wanted("UnknownKey", f"Backend has {{}} more keys the {conf.backend_type}"
                                         " backend does not read."):
                keys.findings.append(_warn(
                    "UnknownKey",
                    f'Backend key "{key[:40]}" is not read by the {conf.backend_type} backend and is'
                    f" ignored{_did_you_mean(key, names)}.",
                ))
            continue
        if value is None:
            continue
        where = f"{conf.backend_type}.{name}"
        try:
            kind = fields[name]
            if kind == "bool":
                values[name] = _go_bool(value, where)
            elif kind == "int":
                values[name] = _go_int(value, where)
            else:
                values[name] = _go_string(value, where)
        except _GoError as e:
            if keys.wanted("InvalidBackend", "Backend has {} more invalid values.",
                           Severity.ERROR):
                keys.findings.append(_err(
                    "InvalidBackend",
                    f"net-conf.json Backend.{name} is invalid: {e}.",
                    f"flannel fails with 'error decoding {conf.backend_type} backend config'.",
                    _typed_fix(name, kind, value),
                ))
    found.extend(keys.done())
    found.extend(_backend_values(conf.backend_type, values))
    return found


def _typed_fix(name: str, kind: str, value: object) -> str:
    """The value written as the type the backend reads (``"true"`` → ``true``), when it is one."""
    text = str(value).strip().lower() if isinstance(value, str) and not isinstance(value, _Number) else None
    if kind == "bool" and text in ("true", "false"):
        return f'write "{name}": {text} (a JSON boolean, without quotes).'
    if kind == "int" and text is not None and text.lstrip("-").isdigit():
        return f'write "{name}": {int(text)} (a JSON number, without quotes).'
    if kind == "bool":
        return f'write "{name}": true or false (a JSON boolean).'
    return ""


def _backend_values(btype: str, values: dict[str, object]) -> list[Finding]:
    """Checks a backend makes on its decoded values (or the kernel makes for it)."""
    out: list[Finding] = []
    if btype == "vxlan":
        vni = values.get("VNI")
        if isinstance(vni, int) and not 0 <= vni <= VNI_MAX:
            out.append(_err(
                "InvalidBackend", f"vxlan VNI {vni} is outside 0..{VNI_MAX} (24 bits).",
                "flannel fails with 'failed to create vxlan device'.", 'use "VNI": 1 (the default).'))
    for port_key in ("Port", "ListenPort", "ListenPortV6"):
        port = values.get(port_key)
        if not isinstance(port, int) or 0 <= port <= 65535:
            continue
        if btype == "vxlan" and port_key == "Port":
            # flannel starts: netlink sets IFLA_VXLAN_PORT only when Port > 0, as a uint16
            # (vishvananda/netlink link_linux.go), so say what the device really gets.
            really = "the kernel's default 8472" if port <= 0 else f"{port % 65536} (as a 16-bit value)"
            out.append(_warn("PortOutOfRange", f"vxlan Port {port} is not a UDP port: the device uses"
                                               f" {really}.", fix='write "Port": 8472, or leave it out.'))
        else:
            out.append(_err("InvalidBackend", f"{btype} {port_key} {port} is not a UDP port (0-65535)."))
    mtu = values.get("MTU")
    if isinstance(mtu, int) and mtu < 0:
        out.append(_err("InvalidBackend", f"{btype} MTU {mtu} is negative."))
    if btype == "wireguard":
        mode = values.get("Mode")
        if isinstance(mode, str) and mode not in WIREGUARD_MODES:
            out.append(_err(
                "InvalidBackend", f"wireguard Mode {_shown(mode)} is not one of {WIREGUARD_MODES}.",
                "flannel fails with 'no valid Mode configured'."))
        psk = values.get("PSK")
        if isinstance(psk, str) and psk and not _wireguard_key(psk):
            # pkg/backend/wireguard/device.go: wgtypes.ParseKey (base64 of 32 bytes).
            out.append(_err(
                "InvalidBackend", "wireguard PSK is not a key (base64 of 32 bytes).",
                "flannel fails with 'could not parse psk'.", "generate one with `wg genpsk`."))
    if btype == "ipsec":
        psk = values.get("PSK")
        # pkg/backend/ipsec/ipsec.go: len(cfg.PSK) < minPasswordLength, and Go's len counts bytes.
        if not isinstance(psk, str) or len(psk.encode()) < IPSEC_MIN_PSK:
            out.append(_err(
                "InvalidBackend",
                f"ipsec PSK must be at least {IPSEC_MIN_PSK} bytes.",
                "flannel fails with 'config error, password is too short'.",
                "generate one with `dd if=/dev/urandom count=48 bs=1 | xxd -p -c 48`.",
            ))
    return out


def _wireguard_key(text: str) -> bool:
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (ValueError, binascii.Error):
        return False


def _semantics(conf: NetConf) -> list[Finding]:
    """What flannel accepts, but that fails later or surprises (kube mode)."""
    out: list[Finding] = []
    if not conf.enable_ipv4 and not conf.enable_ipv6:
        out.append(_err(
            "NoIPFamily", "net-conf.json enables neither IPv4 nor IPv6.",
            "flannel exits with 'none defined stack' (pkg/ipmatch/match.go).",
            "leave EnableIPv4 at its default (true) or set EnableIPv6: true.",
        ))
    for enabled, attr, key in (
        (conf.enable_ipv4, "network", "Network"),
        (conf.enable_ipv6, "ipv6_network", "IPv6Network"),
    ):
        net: ParsedCidr | None = getattr(conf, attr)
        if enabled and net is None:
            flag = "EnableIPv4 (true by default)" if key == "Network" else "EnableIPv6"
            out.append(_err(
                "MissingNetwork", f"net-conf.json has no {key} but {flag} is on.",
                "every node then fails with 'subnet ... specified in the flannel net config doesn't"
                " contain ... PodCIDR' (pkg/subnet/kube/kube.go).",
                f'add "{key}": "<the cluster-cidr>".',
            ))
        if net is not None and net.host_bits_set:
            out.append(_err(
                "HostBitsSet",
                f"net-conf.json {key} {net.text} has host bits set; flannel silently reads it"
                f" as {net.network}.",
                "A network written one way and used another clashes with other networks unseen.",
                f'write "{key}": "{net.network}".',
            ))
        if net is not None and not enabled:
            out.append(_warn(
                "IgnoredNetwork",
                f"net-conf.json sets {key} but {'EnableIPv4' if key == 'Network' else 'EnableIPv6'}"
                " is off: flannel ignores it.",
            ))
    if conf.enable_ipv6 and conf.backend_type not in DUAL_STACK_BACKENDS:
        out.append(_warn(
            "NoIPv6Backend",
            f"the {conf.backend_type} backend carries no IPv6: flannel silently turns IPv6 off.",
            fix=f"use one of {', '.join(sorted(DUAL_STACK_BACKENDS))}.",
        ))
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

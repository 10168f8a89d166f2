"""net-conf.json's ``Backend``, decoded as flannel's chosen backend decodes it.

Upstream, flannel-io/flannel:

* ``pkg/subnet/config.go`` ``parseBackendType``: ``Backend.Type``, ``udp`` when absent.
* ``pkg/backend/manager.go``: the backend type is lower-cased and looked up
  among the registered ones (``main.go`` imports alloc, extension, host-gw,
  ipip, ipsec, tencent-vpc, udp, vxlan, wireguard).
* each backend's ``RegisterNetwork`` decodes ``Backend`` into its own struct
  (``pkg/backend/vxlan/vxlan.go`` ``VXLANConfig`` and so on), with Go's
  ``encoding/json`` (:mod:`webhook.core.rules.gojson`), then checks its values.
"""

from __future__ import annotations

import base64
import binascii

from webhook.core.rules.findings import Finding, Severity
from webhook.core.rules.gojson import (
    GoError,
    KeyReport,
    Number,
    Pairs,
    did_you_mean,
    fold,
    go_bool,
    go_int,
    go_string,
    json_kind,
    match_field,
    shown,
)

__all__ = [
    "BACKENDS",
    "DUAL_STACK_BACKENDS",
    "IPSEC_MIN_PSK",
    "IPV4_ADDRESS_BACKENDS",
    "VNI_MAX",
    "WIREGUARD_MODES",
    "decode_backend",
    "udp_unsupported",
]

# pkg/backend/*: backend.Register(name, ...) for every backend main.go imports.
BACKENDS = frozenset(
    {"alloc", "extension", "host-gw", "ipip", "ipsec", "tencent-vpc", "udp", "vxlan", "wireguard"}
)
# pkg/subnet/kube/kube.go: "only vxlan, host-gw and wireguard backends support dual stack".
DUAL_STACK_BACKENDS = frozenset({"vxlan", "host-gw", "wireguard"})
#: Backends whose RegisterNetwork takes the node's IPv4 external address, ip.FromIP(ExtAddr)
#: (pkg/backend/{udp/udp_amd64,ipip/ipip,ipsec/ipsec,alloc/alloc,tencentvpc/tencentvpc}.go):
#: IPv6-only, pkg/ipmatch/match.go leaves ExtAddr nil and FromIP panics.
IPV4_ADDRESS_BACKENDS = frozenset({"udp", "ipip", "ipsec", "alloc", "tencent-vpc"})
# pkg/backend/ipsec/ipsec.go: minPasswordLength.
IPSEC_MIN_PSK = 96
# pkg/backend/wireguard/wireguard.go: the Mode constants.
WIREGUARD_MODES = ("separate", "auto", "ipv4", "ipv6")
# Linux VXLAN: a VNI is 24 bits.
VNI_MAX = (1 << 24) - 1

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


def _err(code: str, summary: str, detail: str = "", fix: str = "") -> Finding:
    return Finding(Severity.ERROR, code, summary, detail, fix)


def _warn(code: str, summary: str, detail: str = "", fix: str = "") -> Finding:
    return Finding(Severity.WARNING, code, summary, detail, fix)


def udp_unsupported(arch: str) -> Finding:
    """The udp backend on a node that is not amd64."""
    return _err(
        "BackendUnsupported",
        f"the udp backend does not run on {arch}.",
        "flannel fails with 'UDP backend is not supported on this architecture'"
        " (pkg/backend/udp/udp.go).",
        'use "Backend": {"Type": "vxlan"}.',
    )


def decode_backend(raw: object, arch: str) -> tuple[str | None, list[Finding]]:
    """``parseBackendType`` and the chosen backend's own decoding of ``Backend`` (``raw``:
    the parsed value, ``None`` for JSON ``null``).

    Returns the backend type flannel picks (``None`` when ``Backend`` or its ``Type`` cannot
    even be decoded) and the findings.
    """
    found: list[Finding] = []
    if raw is None:
        btype = ""
        pairs = Pairs()
    elif not isinstance(raw, Pairs):
        return None, [_err(
            "InvalidBackend",
            f"net-conf.json Backend must be an object, found a JSON {json_kind(raw)}.",
            "flannel fails with 'error decoding Backend property of config'.",
            'write "Backend": {"Type": "vxlan"}.',
        )]
    else:
        pairs = raw
        btype = ""
        for key, value in pairs:
            if match_field(key, ["Type"]) and value is not None:
                if not isinstance(value, str) or isinstance(value, Number):
                    return None, [_err(
                        "InvalidBackend",
                        f"net-conf.json Backend.Type must be a string, found a JSON "
                        f"{json_kind(value)}.",
                        "flannel fails with 'error decoding Backend property of config'.",
                    )]
                btype = str(value)
    # pkg/backend/manager.go: GetBackend lower-cases the type with Go's strings.ToLower, which
    # maps U+0130 (İ) to "i" (Python's str.lower gives "i" and a combining dot).
    backend_type = btype.replace("\u0130", "i").lower()
    if backend_type not in BACKENDS:
        return backend_type, [_err(
            "UnknownBackend",
            f"net-conf.json Backend.Type {shown(btype)} is not a flannel backend"
            f"{did_you_mean(backend_type, sorted(BACKENDS))}.",
            f"flannel fails with 'unknown backend type'. Known: {', '.join(sorted(BACKENDS))}.",
            'use "Type": "vxlan" unless you know you need another.',
        )]
    if backend_type == "udp" and arch != "amd64":
        found.append(udp_unsupported(arch))
    fields = _BACKEND_FIELDS[backend_type]
    names = list(fields)
    folded = fold(names)
    values: dict[str, object] = {}
    keys = KeyReport()
    for key, value in pairs:
        if match_field(key, ["Type"]):
            continue
        name = match_field(key, names, folded)
        if name is None:
            if keys.wanted("UnknownKey", f"Backend has {{}} more keys the {backend_type}"
                                         " backend does not read."):
                keys.findings.append(_warn(
                    "UnknownKey",
                    f'Backend key "{key[:40]}" is not read by the {backend_type} backend and is'
                    f" ignored{did_you_mean(key, names)}.",
                ))
            continue
        if value is None:
            continue
        where = f"{backend_type}.{name}"
        try:
            kind = fields[name]
            if kind == "bool":
                values[name] = go_bool(value, where)
            elif kind == "int":
                values[name] = go_int(value, where)
            else:
                values[name] = go_string(value, where)
        except GoError as e:
            if keys.wanted("InvalidBackend", "Backend has {} more invalid values.",
                           Severity.ERROR):
                keys.findings.append(_err(
                    "InvalidBackend",
                    f"net-conf.json Backend.{name} is invalid: {e}.",
                    f"flannel fails with 'error decoding {backend_type} backend config'.",
                    _typed_fix(name, kind, value),
                ))
    found.extend(keys.done())
    found.extend(_backend_values(backend_type, values))
    return backend_type, found


def _typed_fix(name: str, kind: str, value: object) -> str:
    """The value written as the type the backend reads (``"true"`` → ``true``), when it is one."""
    text = str(value).strip().lower() if isinstance(value, str) and not isinstance(value, Number) else None
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
                "InvalidBackend", f"wireguard Mode {shown(mode)} is not one of {WIREGUARD_MODES}.",
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

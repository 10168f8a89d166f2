"""Kubernetes' CEL ``ip`` and ``cidr`` libraries (and ext strings' ``split``) for cel-python.

kube-apiserver evaluates ValidatingAdmissionPolicy expressions with cel-go plus the
Kubernetes libraries of ``k8s.io/apiserver/pkg/cel/library``. cel-python knows only
the CEL specification, so this module restates, for the functions flannel-guard's
policy uses, what those libraries do. Restated from the Go sources, not copied:

* ``library/ip.go``: ``isIP(string)``, ``ip(string)``, ``<IP>.family()``,
  ``<IP>.isUnspecified()``, ``isLoopback``, ``isLinkLocalMulticast``,
  ``isLinkLocalUnicast``, ``isGlobalUnicast``, ``string(<IP>)``. A string is parsed
  by Go's ``netip.ParseAddr`` (IPv4 dotted decimal without leading zeros, IPv6 of
  RFC 4291), then a zone (``fe80::1%eth0``) and an IPv4-mapped IPv6 address
  (``::ffff:1.2.3.4``) are refused (``parseIPAddr``).
* ``library/cidr.go``: ``isCIDR(string)``, ``cidr(string)``, ``<CIDR>.ip()`` (the
  address *as written*, host bits and all: ``netip.Prefix.Addr``),
  ``<CIDR>.masked()``, ``<CIDR>.prefixLength()``, ``<CIDR>.containsIP(<IP>|string)``,
  ``<CIDR>.containsCIDR(<CIDR>|string)``, ``string(<CIDR>)``. A string is parsed by
  ``netip.ParsePrefix`` (host bits are kept, not refused, whatever the Go doc comment
  says; the prefix length is decimal without a sign or a leading zero), then an
  IPv4-mapped address is refused (``parseCIDR``).
* ``containsCIDR`` changed in k8s.io/apiserver v0.32.4 / v0.33.0 (Kubernetes 1.32.4 and
  1.33; kubernetes/kubernetes#130450, commit "Fix implementation of ContainsCIDR to allow
  non-equal addresses"). Before, it compared the container's masked prefix with the
  *unmasked* ``PrefixFrom(other.Addr(), container.Bits())``, so it answered true only
  when the contained CIDR starts at the container's network address:
  ``cidr('10.244.0.0/16').containsCIDR('10.244.3.0/24')`` was false. Since, it is
  ``Overlaps(other) && container.Bits() <= other.Bits()``. ``CelK8s(contains_cidr_fixed=False)``
  gives the old answer.
* cel-go ``ext/strings.go``: ``<string>.split(<string>)`` (Go's ``strings.Split``).

Each value type compares equal as Go's ``netip`` types do (address and prefix length).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import celpy
from celpy import celtypes

Addr = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = ["CIDR", "IP", "CelK8s", "parse_addr", "parse_prefix"]


class ParseError(ValueError):
    """The string is not what netip (and the Kubernetes library's checks) accept."""


_V4 = re.compile(r"(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}")


def parse_addr(raw: str) -> Addr:
    """``parseIPAddr`` (ip.go): netip.ParseAddr, then no zone and no IPv4-mapped IPv6."""
    if "%" in raw:
        raise ParseError(f"IP address {raw!r} with zone value is not allowed")
    if "." in raw and ":" not in raw:
        if not _V4.fullmatch(raw):  # netip: four decimal fields, no leading zeros, no spaces
            raise ParseError(f"IP Address {raw!r} parse error")
    elif ":" not in raw:
        raise ParseError(f"IP Address {raw!r} parse error")
    try:
        addr = ipaddress.ip_address(raw)
    except ValueError as e:
        raise ParseError(f"IP Address {raw!r} parse error: {e}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        raise ParseError(f"IPv4-mapped IPv6 address {raw!r} is not allowed")
    return addr


def parse_prefix(raw: str) -> tuple[Addr, int]:
    """``parseCIDR`` (cidr.go): netip.ParsePrefix (host bits kept), then no IPv4-mapped IPv6."""
    text, sep, bits_text = raw.rpartition("/")
    if not sep:
        raise ParseError(f"netip.ParsePrefix({raw!r}): no '/'")
    if "%" in text:
        raise ParseError(f"netip.ParsePrefix({raw!r}): IPv6 zones cannot be present in a prefix")
    if not re.fullmatch(r"0|[1-9][0-9]*", bits_text):
        raise ParseError(f"netip.ParsePrefix({raw!r}): bad bits after slash")
    addr = parse_addr(text)
    bits = int(bits_text)
    if bits > addr.max_prefixlen:
        raise ParseError(f"netip.ParsePrefix({raw!r}): prefix length out of range")
    return addr, bits


@dataclass(frozen=True)
class IP:
    """``apiservercel.IP``: a netip.Addr."""

    addr: Addr

    def __str__(self) -> str:
        return str(self.addr)


@dataclass(frozen=True)
class CIDR:
    """``apiservercel.CIDR``: a netip.Prefix, the address as written and the prefix length."""

    addr: Addr
    bits: int

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(f"{self.addr}/{self.bits}", strict=False)

    def masked(self) -> CIDR:
        return CIDR(self.network.network_address, self.bits)

    def contains(self, addr: Addr) -> bool:
        """netip.Prefix.Contains: same family, and the first ``bits`` bits agree."""
        return addr.version == self.addr.version and addr in self.network

    def overlaps(self, other: CIDR) -> bool:
        """netip.Prefix.Overlaps: same family, and equal on the shorter of the two prefixes."""
        if other.addr.version != self.addr.version:
            return False
        bits = min(self.bits, other.bits)
        return CIDR(self.addr, bits).masked() == CIDR(other.addr, bits).masked()

    def __str__(self) -> str:
        return f"{self.addr}/{self.bits}"


def _string_arg(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"no such overload for {type(value).__name__}")
    return str(value)


class CelK8s:
    """A cel-python environment with the Kubernetes ip/cidr functions; one per containsCIDR behaviour."""

    def __init__(self, *, contains_cidr_fixed: bool = True) -> None:
        self.contains_cidr_fixed = contains_cidr_fixed
        self.env = celpy.Environment()
        self.functions = {
            "isIP": self.is_ip, "isCIDR": self.is_cidr, "cidr": self.cidr, "ip": self.ip,
            "family": self.family, "masked": self.masked, "prefixLength": self.prefix_length,
            "containsIP": self.contains_ip, "containsCIDR": self.contains_cidr, "string": self.string,
            "isUnspecified": lambda v: celtypes.BoolType(self._ip(v).addr.is_unspecified),
            "isLoopback": lambda v: celtypes.BoolType(self._ip(v).addr.is_loopback),
            "isLinkLocalMulticast": self.is_link_local_multicast,
            "isLinkLocalUnicast": lambda v: celtypes.BoolType(self._ip(v).addr.is_link_local),
            "isGlobalUnicast": self.is_global_unicast,
            "split": self.split,
        }
        self.program = cache(self._program)

    def _program(self, expression: str) -> celpy.Runner:
        return self.env.program(self.env.compile(expression), functions=self.functions)

    def evaluate(self, expression: str, activation: dict[str, Any]) -> Any:
        """The expression's value, or the CELEvalError it evaluates to (raised errors are returned too)."""
        try:
            return self.program(expression).evaluate(activation)
        except celpy.CELEvalError as e:
            return e

    # -- ip.go ------------------------------------------------------------------------------

    @staticmethod
    def _ip(value: Any) -> IP:
        if not isinstance(value, IP):
            raise TypeError(f"no such overload for {type(value).__name__}")
        return value

    @staticmethod
    def _cidr(value: Any) -> CIDR:
        if not isinstance(value, CIDR):
            raise TypeError(f"no such overload for {type(value).__name__}")
        return value

    @staticmethod
    def is_ip(value: Any) -> celtypes.BoolType:
        try:
            parse_addr(_string_arg(value))
        except ParseError:
            return celtypes.BoolType(False)
        return celtypes.BoolType(True)

    def ip(self, value: Any) -> IP:
        """``ip(string)`` (ip.go stringToIP) and ``<CIDR>.ip()`` (cidr.go cidrToIP, as written)."""
        if isinstance(value, CIDR):
            return IP(value.addr)
        return IP(parse_addr(_string_arg(value)))  # ParseError is a ValueError: a CEL error

    def family(self, value: Any) -> celtypes.IntType:
        return celtypes.IntType(self._ip(value).addr.version)

    def is_link_local_multicast(self, value: Any) -> celtypes.BoolType:
        addr = self._ip(value).addr
        if addr.version == 4:
            return celtypes.BoolType(addr in ipaddress.ip_network("224.0.0.0/24"))
        return celtypes.BoolType(addr in ipaddress.ip_network("ff02::/16"))

    def is_global_unicast(self, value: Any) -> celtypes.BoolType:
        """Go's netip.Addr.IsGlobalUnicast: not unspecified, loopback, multicast, link-local or broadcast."""
        addr = self._ip(value).addr
        broadcast = addr.version == 4 and int(addr) == 0xFFFFFFFF
        return celtypes.BoolType(not (addr.is_unspecified or addr.is_loopback or addr.is_multicast
                                      or addr.is_link_local or broadcast))

    # -- cidr.go ----------------------------------------------------------------------------

    @staticmethod
    def is_cidr(value: Any) -> celtypes.BoolType:
        try:
            parse_prefix(_string_arg(value))
        except ParseError:
            return celtypes.BoolType(False)
        return celtypes.BoolType(True)

    @staticmethod
    def cidr(value: Any) -> CIDR:
        return CIDR(*parse_prefix(_string_arg(value)))

    def masked(self, value: Any) -> CIDR:
        return self._cidr(value).masked()

    def prefix_length(self, value: Any) -> celtypes.IntType:
        return celtypes.IntType(self._cidr(value).bits)

    def contains_ip(self, value: Any, other: Any) -> celtypes.BoolType:
        ip = other if isinstance(other, IP) else self.ip(_string_arg(other))
        return celtypes.BoolType(self._cidr(value).contains(ip.addr))

    def contains_cidr(self, value: Any, other: Any) -> celtypes.BoolType:
        container = self._cidr(value)
        inner = other if isinstance(other, CIDR) else self.cidr(other)
        if self.contains_cidr_fixed:  # v0.32.4+: Overlaps and no shorter prefix
            return celtypes.BoolType(container.overlaps(inner) and container.bits <= inner.bits)
        # Before: Masked() == PrefixFrom(other.Addr(), Bits()) -- the other address unmasked.
        unmasked = CIDR(inner.addr, container.bits) if inner.addr.version == container.addr.version else None
        return celtypes.BoolType(container.masked() == unmasked and container.bits <= inner.bits)

    # -- string() and ext strings -------------------------------------------------------------

    @staticmethod
    def string(value: Any) -> celtypes.StringType:
        if isinstance(value, IP | CIDR):
            return celtypes.StringType(str(value))
        return celtypes.StringType(value)

    @staticmethod
    def split(value: Any, sep: Any) -> celtypes.ListType:
        """cel-go ext strings ``split``: Go's strings.Split (an empty separator splits per character)."""
        text, separator = _string_arg(value), _string_arg(sep)
        parts = list(text) if separator == "" else text.split(separator)
        return celtypes.ListType([celtypes.StringType(p) for p in parts])

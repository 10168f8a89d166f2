"""Go's ``encoding/json``, as far as flannel's ``net-conf.json`` needs it.

Go's decoder differs from Python's ``json`` in ways that matter for flannel, and this
module follows Go: keys match struct fields case-insensitively (``"network"`` sets
``Network``), a later duplicate key wins, unknown keys are ignored, ``null`` leaves a
plain field alone but is handed to a custom decoder (so ``"Network": null`` is an
error), integers must be integer literals (``24.0`` is not a ``uint``), ``NaN`` is not
JSON, and a custom ``UnmarshalJSON`` is handed the value's *raw* literal.

The primitives here are shared by :mod:`webhook.core.rules.flannel` (flannel's
``Config``) and :mod:`webhook.core.rules.backends` (each backend's own struct): the
parser (:func:`loads`), the typed decoders raising :class:`GoError` with Go's wording
(Go's own types, and flannel's ``pkg/ip`` types that parse the raw literal), field
matching, and the bounded key-level reporting (duplicates, unknown keys, "did you mean").
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import json.decoder
import json.scanner
from typing import Any

from webhook.core.cidr import CidrError, ParsedCidr, parse_cidr
from webhook.core.rules.findings import Finding, Severity

__all__ = [
    "MAX_KEY_FINDINGS",
    "GoError",
    "KeyReport",
    "NotJson",
    "Number",
    "Pairs",
    "Str",
    "did_you_mean",
    "duplicates",
    "flannel_cidr",
    "flannel_ip",
    "fold",
    "go_bool",
    "go_int",
    "go_string",
    "json_kind",
    "loads",
    "match_field",
    "raw_text",
    "shorten",
    "shown",
]

# Key-level findings (unknown key, duplicate, case) named one by one; the rest are counted.
MAX_KEY_FINDINGS = 5
# "did you mean" is only worked out for keys this short (difflib is quadratic in length).
_SUGGEST_MAX_KEY = 64


class Number(str):
    """A JSON number kept as its literal text, so Go's integer rules can be applied."""


class NotJson(ValueError):
    """Text Python's ``json`` would take but Go's refuses (``NaN``, ``Infinity``)."""


class GoError(ValueError):
    """What Go's decoder (or flannel's UnmarshalJSON) would return for one value."""


class Str(str):
    """A JSON string with its literal as written (``raw``: between the quotes, escapes not decoded).

    Go's ``encoding/json`` hands a custom ``UnmarshalJSON`` the raw bytes of the value, and
    flannel's ``ip.IP4Net``/``ip.IP4``/``ip.IP6`` only trim the quotes (pkg/ip/ipnet.go,
    ip6net.go): ``"10.244.0.0\\/16"`` is parsed with its backslash, and refused.
    """

    raw: str


class Pairs(list[tuple[str, Any]]):
    """A JSON object as Go sees it: ordered pairs, duplicates included."""


def shown(value: object, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def json_kind(value: object) -> str:
    """The word Go's UnmarshalTypeError uses for a JSON value."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Number):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    return "object"


def _reject_constant(name: str) -> object:
    raise NotJson(f"{name} is not valid JSON")


def _scanstring(s: str, end: int, strict: bool = True) -> tuple[str, int]:
    value, stop = json.decoder.py_scanstring(s, end, strict)  # type: ignore[attr-defined]
    out = Str(value)
    out.raw = s[end:stop - 1]
    return out, stop


def _decoder() -> json.JSONDecoder:
    decoder = json.JSONDecoder(object_pairs_hook=lambda pairs: Pairs(pairs), parse_int=Number,
                               parse_float=Number, parse_constant=_reject_constant)
    decoder.parse_string = _scanstring  # type: ignore[attr-defined]
    # The pure-Python scanner honours parse_string (net-conf.json is capped at a few KiB).
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


_DECODER = _decoder()


#: The deepest nesting read. Go's encoding/json allows 10,000 (``maxNestingDepth`` in
#: scanner.go); a flannel net-conf.json nests two levels. A fixed bound, not the interpreter's
#: recursion limit, so that a verdict never depends on what else raised that limit (celpy does).
MAX_DEPTH = 256


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether ``text`` nests arrays and objects more than ``limit`` levels (brackets in strings
    not counted). Linear; free when the text holds fewer brackets than ``limit``."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def loads(text: str) -> object:
    """Parse JSON keeping objects as ordered (key, value) pair lists, numbers as text, and
    each string value's literal (:class:`Str`).

    Without a backslash in the text every literal is its value: the C scanner, then.
    Raises ``RecursionError`` past :data:`MAX_DEPTH` levels, whatever the recursion limit.
    """
    if too_deep(text):
        raise RecursionError(f"nested more than {MAX_DEPTH} levels")
    if "\\" not in text:
        return json.loads(text, object_pairs_hook=lambda pairs: Pairs(pairs), parse_int=Number,
                          parse_float=Number, parse_constant=_reject_constant)
    return _DECODER.decode(text)


# --- Go-typed decoders: each returns the decoded value or raises GoError. ---

def go_bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise GoError(f"cannot unmarshal {json_kind(value)} into Go struct field {where} of type bool")


def go_int(value: object, where: str, *, unsigned: bool = False) -> int:
    gotype = "uint" if unsigned else "int"
    if isinstance(value, Number):
        text = str(value)
        try:
            number = int(text, 10)
        except ValueError:
            number = None
        if number is not None and "." not in text and "e" not in text.lower() and (
            not unsigned or not text.startswith("-")
        ) and -(1 << 63) <= number < (1 << 64 if unsigned else 1 << 63):
            return number
        raise GoError(f"cannot unmarshal number {shorten(text)} into Go struct field {where} of type"
                      f" {gotype}")
    raise GoError(
        f"cannot unmarshal {json_kind(value)} into Go struct field {where} of type {gotype}"
    )


def go_string(value: object, where: str) -> str:
    if isinstance(value, str) and not isinstance(value, Number):
        return value
    raise GoError(f"cannot unmarshal {json_kind(value)} into Go struct field {where} of type string")


def raw_text(value: object) -> str:
    """What flannel's UnmarshalJSON sees after ``bytes.Trim(j, "\\"")``: the literal, undecoded."""
    if isinstance(value, Str):
        return value.raw
    if isinstance(value, str):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


# --- flannel's own UnmarshalJSON (pkg/ip): the raw literal, parsed as Go's net package does. ---

def _go_prefix(raw: str) -> str:
    """``raw`` with its prefix length's leading zeros dropped, as Go's ``net.ParseCIDR`` reads it.

    ``ParseCIDR`` (src/net/ip.go) reads the length with ``dtoi`` (src/net/parse.go): decimal
    digits, any leading zeros, so ``10.244.0.0/0016`` is ``/16`` to flannel (checked with
    go1.19's ``net.ParseCIDR``). :func:`~webhook.core.cidr.parse_cidr`, shared with the Node
    rule, reads at most three digits; Kubernetes' CEL ``cidr()`` (``netip.ParsePrefix``)
    none with a leading zero: only net-conf.json, which flannel alone reads, is read this way.
    """
    addr, sep, prefix = raw.rpartition("/")
    if sep and 1 < len(prefix) <= 16 and prefix.isascii() and prefix.isdigit() and prefix[0] == "0":
        return f"{addr}/{prefix.lstrip('0') or '0'}"
    return raw


def flannel_cidr(value: object, version: int) -> ParsedCidr:
    """``ip.IP4Net`` / ``ip.IP6Net`` UnmarshalJSON (``net.ParseCIDR``: a zero-padded prefix is read)."""
    raw = raw_text(value)
    try:
        parsed = parse_cidr(_go_prefix(raw))
    except CidrError as e:
        raise GoError(f"invalid CIDR address: {e}") from None
    if parsed.network.version != version:
        want = "IPv4" if version == 4 else "IPv6"
        raise GoError(f"{shown(raw)} is not an {want} CIDR")
    return parsed


def flannel_ip(value: object, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``ip.IP4`` / ``ip.IP6`` UnmarshalJSON (pkg/ip/ipnet.go ``ParseIP4``, ip6net.go ``ParseIP6``).

    Both are Go's ``net.ParseIP`` (no zone id). ``ParseIP4`` then takes ``To4()``, so an
    IPv4-mapped IPv6 address (``::ffff:10.244.1.0``) is its IPv4 address; ``ParseIP6`` takes
    any address, an IPv4 one as its IPv4-mapped form.
    """
    raw = raw_text(value)
    try:
        if "%" in raw:
            raise ValueError(raw)
        addr = ipaddress.ip_address(raw)
    except ValueError:
        raise GoError(f"invalid IP address format {shown(raw)}") from None
    if version == 4:
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is None:
                raise GoError(f"invalid IPv4 address format {shown(raw)}")
            return addr.ipv4_mapped
        return addr
    if isinstance(addr, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{addr}")
    return addr


# --- Struct fields: matched as Go matches them, reported within bounds. ---

def fold(names: list[str]) -> dict[str, str]:
    """casefold -> the first field of that name (Go's encoding/json takes the first match)."""
    index: dict[str, str] = {}
    for name in names:
        index.setdefault(name.casefold(), name)
    return index


def match_field(key: str, names: list[str], folded: dict[str, str] | None = None) -> str | None:
    """Go's encoding/json: an exact name first, else a case-insensitive one."""
    if key in names:
        return key
    return (folded if folded is not None else fold(names)).get(key.casefold())


def did_you_mean(key: str, names: list[str]) -> str:
    if len(key) > _SUGGEST_MAX_KEY:
        return ""
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class KeyReport:
    """Key-level findings, at most ``MAX_KEY_FINDINGS`` of each code, then one count of the rest.

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
        if count > MAX_KEY_FINDINGS:
            self._rest[code] = (severity, rest)
            return False
        return True

    def done(self) -> list[Finding]:
        for code, (severity, rest) in self._rest.items():
            hidden = f"{self._counts[code] - MAX_KEY_FINDINGS:,}"
            self.findings.append(Finding(severity, code, rest.format(hidden)))
        return self.findings


def duplicates(pairs: Pairs, names: list[str], folded: dict[str, str]) -> tuple[list[str], int]:
    """The first few keys set more than once (in order), and how many there are; linear."""
    seen: set[str] = set()
    dups: set[str] = set()
    first: list[str] = []
    for key, _ in pairs:
        name = match_field(key, names, folded) or key
        if name in seen:
            if name not in dups:
                dups.add(name)
                if len(first) < MAX_KEY_FINDINGS:
                    first.append(name)
        else:
            seen.add(name)
    return first, len(dups)

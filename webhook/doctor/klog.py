"""flannel's log lines: the klog header trimmed, the line that names the failure picked out. Pure.

flannel logs through ``k8s.io/klog/v2``, whose header is
``Lmmdd hh:mm:ss.uuuuuu threadid file:line] `` (klog.go ``formatHeader``). Doctor
quotes the message after it: the header is noise in a finding.
"""

from __future__ import annotations

import re

__all__ = ["KNOWN", "kind_of", "known_lines", "last_error", "trim"]

_HEADER = re.compile(r"^[IWEF]\d{4} \d{2}:\d{2}:\d{2}(?:\.\d+)?\s+\d+\s+[^\s\]]+:\d+\]\s?")
_KLOG_ERROR = re.compile(r"^[EF]\d{4} ")
_ERROR_WORDS = re.compile(r"\b(error|failed|fatal|panic)\b", re.IGNORECASE)
_LIMIT = 500

#: Lines of flannel's log that doctor recognises, by kind. The texts are flannel's own:
#: ``pkg/subnet/kube/kube.go`` ("node %q pod cidr not assigned"), ``main.go`` ("Failed to check
#: br_netfilter: "), ``pkg/ipmatch/match.go`` ("Using interface with name %s and address %s"), and
#: the client-go error when the kube-apiserver Service IP cannot be reached ("dial tcp
#: 10.96.0.1:443: i/o timeout", flannel#1409, #1702).
KNOWN: dict[str, re.Pattern[str]] = {
    "no-pod-cidr": re.compile(r"pod cidr not assigned"),
    "br-netfilter": re.compile(r"Failed to check br_netfilter"),
    "interface": re.compile(r"Using interface with name \S+ and (?:v6 )?address \S+"),
    "api-timeout": re.compile(r"dial tcp \S+:\d+: i/o timeout"),
    "network-mismatch": re.compile(r"doesn't contain|net config"),
}


def trim(line: str) -> str:
    """The message of one log line, without klog's header."""
    return _HEADER.sub("", line.strip(), count=1)[:_LIMIT]


def last_error(text: str) -> str | None:
    """The last error line (klog ``E``/``F`` severity, or one that says error/failed), else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if _KLOG_ERROR.match(line) or _ERROR_WORDS.search(trim(line))]
    chosen = errors[-1] if errors else lines[-1] if lines else None
    return trim(chosen) if chosen else None


def known_lines(text: str) -> tuple[str, ...]:
    """The last line of each known kind in ``text``, trimmed, in the order of :data:`KNOWN`."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        for kind, pattern in KNOWN.items():
            if pattern.search(line):
                found[kind] = trim(line)
    return tuple(found[k] for k in KNOWN if k in found)


def kind_of(line: str) -> str | None:
    """Which known kind a (trimmed) line is, None for none."""
    return next((k for k, p in KNOWN.items() if p.search(line)), None)

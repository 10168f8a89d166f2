"""``--fix-network``: correct the flannel ConfigMap's ``Network`` / ``IPv6Network`` instead of refusing it.

Users asked for kube-flannel.yml to follow the cluster's pod CIDR instead of a
hard-coded 10.244.0.0/16 (flannel-io/flannel#1428). Only the value of the key
flannel actually reads is replaced, in the text itself: every other byte of
``net-conf.json`` (other keys, their order, spacing, the backend) stays as
written. The key flannel reads is the last one whose name matches the field
case-insensitively (Go's ``encoding/json``, see :mod:`webhook.core.rules.flannel`).

It never rewrites when the cluster-cidr is unknown or its sources disagree,
nor when existing nodes' podCIDRs would lie outside the new Network: the
validating rules then refuse, with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from webhook.core.cidr import IPNetwork
from webhook.core.rules.configmap import NET_CONF_KEY
from webhook.core.rules.findings import ClusterView
from webhook.core.rules.flannel import parse_net_conf

__all__ = ["NetworkFix", "fix_network", "replace_top_level_value"]

_WS = " \t\n\r"


@dataclass(frozen=True)
class NetworkFix:
    """The JSONPatch to apply and a warning per rewritten value."""

    patch: list[dict[str, Any]]
    warnings: tuple[str, ...]


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _top_level_spans(text: str) -> list[tuple[str, int, int]]:
    """``(key, value_start, value_end)`` for every top-level pair, in order (text must be an object)."""
    decoder = json.JSONDecoder()
    pos = _skip(text, 0)
    if not text.startswith("{", pos):
        raise ValueError("not an object")
    pos = _skip(text, pos + 1)
    spans: list[tuple[str, int, int]] = []
    if text.startswith("}", pos):
        return spans
    while True:
        if not text.startswith('"', pos):
            raise ValueError("expected a key")
        key, pos = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
        pos = _skip(text, pos)
        if not text.startswith(":", pos):
            raise ValueError("expected ':'")
        start = _skip(text, pos + 1)
        _, end = decoder.raw_decode(text, start)
        spans.append((key, start, end))
        pos = _skip(text, end)
        if text.startswith(",", pos):
            pos = _skip(text, pos + 1)
            continue
        if text.startswith("}", pos):
            return spans
        raise ValueError("expected ',' or '}'")


def replace_top_level_value(text: str, field: str, value: str) -> str | None:
    """``text`` with the value flannel reads for ``field`` replaced by the string ``value``.

    None when the field is absent or the text is not a JSON object.
    """
    try:
        spans = _top_level_spans(text)
    except ValueError:
        return None
    matching = [s for s in spans if s[0].casefold() == field.casefold()]
    if not matching:
        return None
    _, start, end = matching[-1]
    return text[:start] + json.dumps(value) + text[end:]


def fix_network(obj: dict[str, Any] | None, view: ClusterView) -> NetworkFix | None:
    """The correction of ``obj``'s net-conf.json, or None when it needs none or must not get one."""
    if not view.cluster_cidr or view.disputed:
        return None
    data = (obj or {}).get("data")
    text = data.get(NET_CONF_KEY) if isinstance(data, dict) else None
    if not isinstance(text, str):
        return None
    conf = parse_net_conf(text).conf
    if conf is None:
        return None
    new_text = text
    changed: list[tuple[str, str, IPNetwork]] = []
    final: list[IPNetwork] = []
    for field, enabled, parsed, version in (
        ("Network", conf.enable_ipv4, conf.network, 4),
        ("IPv6Network", conf.enable_ipv6, conf.ipv6_network, 6),
    ):
        want = view.cidr_of_family(version)
        if not enabled or parsed is None:
            continue
        if want is None or parsed.network == want:
            final.append(parsed.network)
            continue
        replaced = replace_top_level_value(new_text, field, str(want))
        if replaced is None:
            return None
        new_text = replaced
        changed.append((field, parsed.text, want))
        final.append(want)
    if not changed:
        return None
    stranded, _ = view.nodes.outside(final, limit=1)
    if stranded:
        return None
    return NetworkFix(
        patch=[{"op": "replace", "path": f"/data/{NET_CONF_KEY}", "value": new_text}],
        warnings=tuple(
            f"flannel-guard: net-conf.json {field} {old[:50]} corrected to {new}, the cluster-cidr"
            f" (from {view.cidr_source[:80]})"
            for field, old, new in changed
        ),
    )

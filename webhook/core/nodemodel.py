"""One reading of a Node, for the webhook, the node index, ``check`` and ``doctor``.

Only what the rules need is kept: the name, the podCIDRs as the API server stores
them, and the networks they occupy. The API server's v1 conversion
(``pkg/apis/core/v1/conversion.go`` ``Convert_v1_NodeSpec_To_core_NodeSpec``)
decides what "the podCIDRs" are: when ``spec.podCIDR`` is set and ``spec.podCIDRs``
is empty or starts with another value, ``podCIDR`` is authoritative and the stored
podCIDRs are ``[podCIDR]``; otherwise they are ``spec.podCIDRs``. A webhook never
sees the two disagree; a file given to ``check`` may, and is read the same way.

A podCIDR written with host bits (``10.244.1.5/24``) occupies its network
(``10.244.1.0/24``) for overlap purposes everywhere, and is reported as invalid by
the Node rule.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from webhook.core.cidr import CidrError, IPNetwork, parse_cidr

__all__ = ["NodeModel", "is_stored", "networks_of", "node_model", "node_name", "pod_cidrs"]

#: A list item's podCIDRs beyond this are not read (the API server allows two).
_MAX_CIDRS = 8


def node_name(obj: dict[str, Any] | None) -> str:
    meta = (obj or {}).get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else ""


def _spec(obj: dict[str, Any] | None) -> dict[str, Any]:
    spec = (obj or {}).get("spec")
    return spec if isinstance(spec, dict) else {}


def pod_cidrs(obj: dict[str, Any] | None) -> list[str]:
    """The podCIDRs as the API server stores them (v1 conversion: ``podCIDR`` wins a disagreement)."""
    spec = _spec(obj)
    many = spec.get("podCIDRs")
    listed = [c if isinstance(c, str) else json.dumps(c)[:100] for c in many[:_MAX_CIDRS]] \
        if isinstance(many, list) else []
    single = spec.get("podCIDR")
    if isinstance(single, str) and single and (not listed or listed[0] != single):
        return [single]
    return listed


def is_stored(obj: dict[str, Any] | None) -> bool:
    """Whether ``obj`` came from the API (a uid or a creationTimestamp), not a manifest to apply."""
    meta = (obj or {}).get("metadata")
    return isinstance(meta, dict) and bool(meta.get("uid") or meta.get("creationTimestamp"))


@dataclass(frozen=True, slots=True)
class NodeModel:
    """A Node as flannel-guard reads it."""

    name: str
    texts: tuple[str, ...]
    networks: tuple[IPNetwork, ...]
    stored: bool = False

    @property
    def has_pod_cidr(self) -> bool:
        return bool(self.texts)


def networks_of(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    """The networks podCIDR texts occupy (those that parse; host bits masked off)."""
    nets: list[IPNetwork] = []
    for text in texts:
        with contextlib.suppress(CidrError):
            nets.append(parse_cidr(text).network)
    return tuple(nets)


def node_model(obj: Mapping[str, Any] | None) -> NodeModel | None:
    """The model of a Node object (None without a name)."""
    name = node_name(obj)  # type: ignore[arg-type]
    if not name:
        return None
    texts = tuple(pod_cidrs(obj))  # type: ignore[arg-type]
    return NodeModel(name, texts, networks_of(texts), is_stored(obj))  # type: ignore[arg-type]

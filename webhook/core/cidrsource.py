"""The cluster-cidr's sources as values: what kind each is, what it held, and their reconciliation's result.

The types :mod:`webhook.core.discovery` parses into and :mod:`webhook.core.resolve` reconciles,
and the note-text helpers both use (notes end up in AdmissionResponse warnings). Pure.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from webhook.core.cidr import CidrError, IPNetwork, parse_cidr_list

__all__ = ["ORDER", "CidrSource", "ControllerManagerFacts", "Resolution", "SourceKind", "flag_source"]

#: Longest note text; notes end up in AdmissionResponse warnings, which kubectl prints.
_NOTE_LIMIT = 199
#: kube-controller-manager defaults (cmd/kube-controller-manager/app/core.go).
_DEFAULT_MASK_V4 = 24
_DEFAULT_MASK_V6 = 64


class SourceKind(enum.IntEnum):
    """Which kind of source a value came from; the lower wins (:data:`ORDER`)."""

    FLAG = 0
    CONTROLLER_MANAGER = 1
    #: A k3s or RKE2 server's flags, recorded on its Node (:mod:`webhook.core.nodeargs`).
    NODE_ARGS = 2
    KUBEADM = 3
    KUBE_PROXY = 4
    #: The flannel ConfigMap's Network: the cluster-cidr only when no other source holds one.
    FLANNEL = 5


ORDER = tuple(SourceKind)


@dataclass(frozen=True)
class CidrSource:
    """One answer to "what is the cluster-cidr (or the service range)?", with where it came from.

    ``networks`` is empty when the source exists but holds no value (``raw == ""``)
    or a value that does not parse (``error`` says why).
    """

    origin: str
    networks: tuple[IPNetwork, ...]
    raw: str
    kind: SourceKind = SourceKind.FLAG
    error: str | None = None
    # The object it was read from, "namespace/name" (the flannel ConfigMaps).
    ref: str = ""

    def describe(self) -> str:
        """The value as a person writes it: ``10.244.0.0/16,fd00::/56``, or the raw text."""
        if self.networks:
            return ",".join(str(n) for n in self.networks)
        return repr(_clip(self.raw, 60)) if self.raw else "unset"


@dataclass(frozen=True)
class ControllerManagerFacts:
    """What one kube-controller-manager's flags say (None: the flag is absent).

    ``who`` names it in notes: a pod's, or a k3s/RKE2 server's (its Node's node-args).
    """

    pod: str
    cluster_cidr: CidrSource
    allocate_node_cidrs: bool | None = None
    node_cidr_mask_size: int | None = None
    node_cidr_mask_size_ipv4: int | None = None
    node_cidr_mask_size_ipv6: int | None = None
    service_cluster_ip_range: CidrSource | None = None
    notes: tuple[str, ...] = ()
    who: str = ""

    def describe(self) -> str:
        """Who runs it, for notes: ``kube-controller-manager pod kube-system/kcm-cp1``."""
        return self.who or f"kube-controller-manager pod {_clip(self.pod, 80)}"


@dataclass(frozen=True)
class Resolution:
    """The cluster-cidr that wins, every source seen, and the notes a person must read."""

    effective: CidrSource | None
    sources: tuple[CidrSource, ...] = ()
    service: CidrSource | None = None
    allocate_node_cidrs: bool | None = None
    mask_v4: int = _DEFAULT_MASK_V4
    mask_v6: int = _DEFAULT_MASK_V6
    notes: tuple[str, ...] = ()
    # Sources that could not be read (absent, forbidden, unreachable): for logs and doctor,
    # not for every admission response.
    absent: tuple[str, ...] = ()
    # No source held a cluster-cidr, so a flannel ConfigMap's Network is it (``effective``
    # is then that ConfigMap's source, None before one exists).
    flannel_defines: bool = False

    @property
    def networks(self) -> tuple[IPNetwork, ...] | None:
        """The effective cluster-cidr, None when no source answered."""
        return self.effective.networks if self.effective else None

    @property
    def agree(self) -> bool:
        """True when every source that holds a value holds the same one."""
        return len({s.networks for s in self.sources if s.networks}) <= 1


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _note(text: str) -> str:
    return _clip(" ".join(text.split()), _NOTE_LIMIT)


def _mid(text: str, limit: int) -> str:
    """Shorten from the middle: the head (what) and the tail (which flag or key) both matter."""
    if len(text) <= limit:
        return text
    head = max(1, (limit - 1) // 2)
    return text[:head] + "…" + text[len(text) - (limit - 1 - head):]


def _fit(build: Callable[..., str], *origins: str) -> str:
    """``build(*origins)``, with the origins shortened from the middle until the note fits."""
    text = build(*origins)
    if len(text) <= _NOTE_LIMIT or not origins:
        return _note(text)
    room = _NOTE_LIMIT - len(build(*("" for _ in origins)))
    each = max(12, room // len(origins))
    return _note(build(*(_mid(o, each) for o in origins)))


def _source(origin: str, raw: object, kind: SourceKind) -> CidrSource:
    """Parse ``raw`` as a (dual-stack) CIDR list; an unparsable value keeps its reason."""
    if raw is None or raw == "":
        return CidrSource(origin=origin, networks=(), raw="", kind=kind)
    if not isinstance(raw, str):
        return CidrSource(origin=origin, networks=(), raw=str(raw)[:200], kind=kind,
                          error=f"expected a string, found {type(raw).__name__}")
    try:
        networks = parse_cidr_list(raw)
    except CidrError as e:
        return CidrSource(origin=origin, networks=(), raw=raw[:200], kind=kind, error=str(e))
    return CidrSource(origin=origin, networks=networks, raw=raw, kind=kind)


def flag_source(raw: str, origin: str = "--cluster-cidr flag") -> CidrSource:
    """The operator's explicit ``--cluster-cidr`` (or ``FLANNEL_GUARD_CLUSTER_CIDR``)."""
    return _source(origin, raw, SourceKind.FLAG)


# --- kube-controller-manager -------------------------------------------------------------

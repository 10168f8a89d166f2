"""k3s and RKE2 as cluster-cidr sources: the flags their servers record on their own Node. Pure.

Neither k3s nor RKE2 runs kube-controller-manager as a pod the API lists, and neither
writes a kubeadm-config. Both record the command line of the process on its Node, as the
annotation ``k3s.io/node-args`` / ``rke2.io/node-args`` (k3s ``pkg/nodeconfig``
``getNodeArgs``; RKE2 is built on k3s with ``version.Program`` = ``rke2``):

* a JSON list: the subcommand first (``"server"`` or ``"agent"``), then the flags,
  with config.yaml's values among them (``configfilearg``, since k3s v1.21.1);
* ``--flag=value`` is recorded as two elements, ``"--flag", "value"``; a value
  written apart stays apart; secrets are ``"********"``;
* a flag left at its default is absent (k3s#6516).

What a server's list gives, as k3s reads it (``pkg/cli/server/server.go``):

* ``--cluster-cidr`` (default ``10.42.0.0/16``, or ``fd00:42::/56`` when the node's first
  IP is IPv6: ``util.GetDefaultAddresses``); every occurrence adds to the list (a string
  slice flag), each occurrence may itself be ``a,b``;
* ``--service-cidr`` (default ``10.43.0.0/16`` or ``fd00:43::/112``), likewise;
* ``--kube-controller-manager-arg`` (repeatable, ``name=value``): k3s starts
  kube-controller-manager with ``allocate-node-cidrs=true`` and ``cluster-cidr`` from the
  above, and these extra args override (``config.GetArgs``), so a
  ``node-cidr-mask-size[-ipv4|-ipv6]`` there is the node mask (default /24 and /64).

RKE2 copies k3s's ``cluster-cidr`` / ``service-cidr`` flags (rancher/rke2
``pkg/cli/cmds/server.go`` ``copyFlag``): the same flags and the same defaults.

Only servers run kube-controller-manager; an agent's list holds no cluster-cidr and is
skipped. The result is a :class:`~webhook.core.cidrsource.ControllerManagerFacts` per server,
whose origins name the distribution, the node and whether the value is the default.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from webhook.core.cidrsource import CidrSource, ControllerManagerFacts, SourceKind, _clip, _note, _source

__all__ = [
    "CONFIG_FILES",
    "DISTRIBUTIONS",
    "SERVER_LABELS",
    "distribution_of",
    "from_node",
    "from_nodes",
    "is_server",
]

#: (distribution, the annotation its nodes carry their flags in).
DISTRIBUTIONS: tuple[tuple[str, str], ...] = (("k3s", "k3s.io/node-args"), ("rke2", "rke2.io/node-args"))
#: Labels k3s and RKE2 put on servers (and kubeadm on its control plane).
SERVER_LABELS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
#: Where each distribution reads its server flags from (config.yaml keys are the flags' names).
CONFIG_FILES = {"k3s": "/etc/rancher/k3s/config.yaml", "rke2": "/etc/rancher/rke2/config.yaml"}
_DEFAULT_CLUSTER = {4: "10.42.0.0/16", 6: "fd00:42::/56"}
_DEFAULT_SERVICE = {4: "10.43.0.0/16", 6: "fd00:43::/112"}
_KCM_ARG = "--kube-controller-manager-arg"
_MASK_FLAGS = ("node-cidr-mask-size", "node-cidr-mask-size-ipv4", "node-cidr-mask-size-ipv6")
_LIST_LIMIT = 2048  # elements of a node-args list read (k3s writes a few dozen)


def _meta(node: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = node.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _strings(meta: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = meta.get(key)
    return value if isinstance(value, Mapping) else {}


def distribution_of(source: CidrSource) -> tuple[str, str] | None:
    """(distribution, node) of a source read from a server's node-args, None for any other source."""
    if source.kind is not SourceKind.NODE_ARGS:
        return None
    distribution = source.origin.split(" ", 1)[0]
    return (distribution, source.ref) if distribution in CONFIG_FILES else None


def is_server(node: Mapping[str, Any]) -> bool:
    """Whether the Node carries a server's role label (:data:`SERVER_LABELS`)."""
    labels = _strings(_meta(node), "labels")
    return any(label in labels for label in SERVER_LABELS)


def _flag_values(args: Sequence[str], name: str) -> list[str]:
    """Every value of ``--name``: ``--name=v`` or ``--name`` followed by ``v`` (urfave/cli's reading)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        flag, eq, value = arg.partition("=")
        if flag != name:
            continue
        if eq:
            out.append(value)
        elif i < len(args):
            out.append(args[i])
            i += 1
    return out


def _first_ip_is_v6(args: Sequence[str], node: Mapping[str, Any]) -> bool:
    """The family k3s chooses its defaults by: ``--node-ip``'s first, else the node's first InternalIP."""
    for value in _flag_values(args, "--node-ip"):
        first = value.split(",")[0].strip()
        if first:
            return ":" in first
    status = node.get("status")
    addresses = status.get("addresses") if isinstance(status, Mapping) else None
    for a in addresses if isinstance(addresses, list) else []:
        if isinstance(a, Mapping) and a.get("type") == "InternalIP" and isinstance(a.get("address"), str):
            return ":" in a["address"]
    return False


def _kcm_args(args: Sequence[str]) -> dict[str, str]:
    """``--kube-controller-manager-arg`` values as kube-controller-manager flags (the last wins)."""
    found: dict[str, str] = {}
    for value in _flag_values(args, _KCM_ARG):
        name, eq, val = value.removeprefix("--").partition("=")
        if eq and name:
            found[name] = val
    return found


def _parsed_list(raw: object) -> tuple[list[str] | None, str | None]:
    if not isinstance(raw, str):
        return None, "not a string"
    try:
        doc = json.loads(raw)
    except ValueError as e:
        return None, f"not JSON ({_clip(str(e), 60)})"
    if not isinstance(doc, list) or not all(isinstance(a, str) for a in doc[:_LIST_LIMIT]):
        return None, "not a JSON list of strings"
    return doc[:_LIST_LIMIT], None


def from_node(node: Mapping[str, Any]) -> ControllerManagerFacts | None:
    """A server's kube-controller-manager as its k3s/RKE2 node-args describe it.

    None when the Node has no node-args annotation, or its list is an agent's. An
    annotation that is not a JSON list gives facts whose cluster-cidr has the reason
    as ``error`` (and so a note), never an exception.
    """
    meta = _meta(node)
    annotations = _strings(meta, "annotations")
    name = _clip(str(meta.get("name") or "?"), 80)
    found = next(((d, a) for d, a in DISTRIBUTIONS if a in annotations), None)
    if found is None:
        return None
    distribution, annotation = found
    args, error = _parsed_list(annotations[annotation])
    who = f"{distribution} server node {name}"
    if args is None:
        bad = CidrSource(f"{who} {annotation}", (), _clip(str(annotations[annotation]), 200),
                         SourceKind.NODE_ARGS, f"{annotation} is {error}", name)
        return ControllerManagerFacts(pod=name, cluster_cidr=bad, who=who)
    if args and args[0] == "agent":
        return None  # agents run no kube-controller-manager
    family = 6 if _first_ip_is_v6(args, node) else 4
    kcm = _kcm_args(args)

    def source(flag: str, defaults: Mapping[int, str], what: str) -> CidrSource:
        values = [v for v in _flag_values(args, flag) if v]
        if values:
            return _source(f"{who} {annotation} {flag}", ",".join(values), SourceKind.NODE_ARGS)
        return _source(f"{who}: {distribution}'s default {what} ({flag} absent from {annotation})",
                       defaults[family], SourceKind.NODE_ARGS)

    cluster = source("--cluster-cidr", _DEFAULT_CLUSTER, "cluster-cidr")
    service = source("--service-cidr", _DEFAULT_SERVICE, "service-cidr")
    if "cluster-cidr" in kcm:  # an extra arg overrides what k3s passes
        cluster = _source(f"{who} {annotation} {_KCM_ARG}=cluster-cidr", kcm["cluster-cidr"],
                          SourceKind.NODE_ARGS)
    cluster, service = (dataclasses.replace(s, ref=name) for s in (cluster, service))
    notes: list[str] = []
    masks: dict[str, int | None] = dict.fromkeys(_MASK_FLAGS)
    for flag in _MASK_FLAGS:
        raw = kcm.get(flag)
        if raw is None:
            continue
        if raw.isascii() and raw.isdigit() and len(raw) <= 4 and int(raw) <= 128:
            masks[flag] = int(raw)
        else:
            notes.append(_note(f"{who}: {_KCM_ARG}={flag}={_clip(raw, 20)!r} is not a mask size"))
    allocate = kcm.get("allocate-node-cidrs", "true")
    return ControllerManagerFacts(
        pod=name,
        cluster_cidr=cluster,
        allocate_node_cidrs=allocate in ("1", "t", "T", "TRUE", "true", "True"),
        node_cidr_mask_size=masks["node-cidr-mask-size"],
        node_cidr_mask_size_ipv4=masks["node-cidr-mask-size-ipv4"],
        node_cidr_mask_size_ipv6=masks["node-cidr-mask-size-ipv6"],
        service_cluster_ip_range=service,
        notes=tuple(notes),
        who=who,
    )


def _mask_key(f: ControllerManagerFacts) -> tuple[int | None, int | None, int | None]:
    return f.node_cidr_mask_size, f.node_cidr_mask_size_ipv4, f.node_cidr_mask_size_ipv6


def from_nodes(nodes: Sequence[Mapping[str, Any]]) -> tuple[list[ControllerManagerFacts], list[str]]:
    """Every server's facts, labelled servers first then by name, and the notes on how they differ.

    Two servers whose cluster-cidrs differ are two sources that disagree (the resolution
    says so); servers whose node masks differ get a note here, as kube-controller-manager
    runs on each and the elected one decides.
    """
    ordered = sorted((n for n in nodes if isinstance(n, Mapping)),
                     key=lambda n: (not is_server(n), str(_meta(n).get("name") or "")))
    facts = [f for f in map(from_node, ordered) if f is not None]
    notes: list[str] = []
    if facts and any(_mask_key(f) != _mask_key(facts[0]) for f in facts[1:]):
        other = next(f for f in facts[1:] if _mask_key(f) != _mask_key(facts[0]))
        notes.append(_note(f"node mask sizes differ between {facts[0].who} and {other.who}"
                           " (--kube-controller-manager-arg node-cidr-mask-size): using the former"))
    return facts, notes

"""The cluster-cidr, resolved: which source wins and every way the sources disagree. Pure.

The sources are read by the parsers of :mod:`webhook.core.discovery` (each returns a
:class:`~webhook.core.discovery.CidrSource` with its origin); :func:`resolve` picks the
effective one in the order of :data:`~webhook.core.discovery.ORDER`, the flannel ConfigMap
last and only when nothing else holds a value, and :func:`resolution_from` does both from
the raw objects the API returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from webhook.core.cidr import IPNetwork
from webhook.core.cidrsource import (
    CidrSource,
    ControllerManagerFacts,
    Resolution,
    SourceKind,
    _clip,
    _fit,
    _note,
)
from webhook.core.discovery import (
    from_controller_manager_pod,
    from_flannel_configmap,
    from_kube_proxy,
    from_kubeadm_config,
    node_mask_sizes,
)
from webhook.core.nodeargs import from_nodes

__all__ = ["resolution_from", "resolve"]


# --- reconciliation -------------------------------------------------------------------------


def _overlap(a: Iterable[IPNetwork], b: Iterable[IPNetwork]) -> tuple[IPNetwork, IPNetwork] | None:
    for x in a:
        for y in b:
            if x.version == y.version and x.overlaps(y):  # type: ignore[arg-type]
                return x, y
    return None


def resolve(
    sources: Sequence[CidrSource],
    *,
    services: Sequence[CidrSource] = (),
    controller_managers: Sequence[ControllerManagerFacts] = (),
    notes: Sequence[str] = (),
    flannel: Sequence[CidrSource] | None = None,
) -> Resolution:
    """Pick the effective cluster-cidr and say every way the sources disagree.

    The effective source is the first with a value in :data:`ORDER` (ties keep
    the given order). Notes, in this order: the ``notes`` passed in; unparsable
    values; one per source whose value differs from the effective one, naming
    both; a controller-manager or kubeadm source left unset while another has a
    value (the seed's root cause: ``kubeadm init`` without ``--pod-network-cidr``);
    a controller-manager that does not allocate node CIDRs; mask-size conflicts;
    the pod range overlapping the service range; no source at all.
    """
    ordered = sorted(sources, key=lambda s: s.kind)
    if flannel is not None and not any(s.networks for s in ordered):
        return _flannel_defines(ordered, flannel, services, controller_managers, notes)
    out: list[str] = [_note(n) for n in notes]
    for s in (*ordered, *services):
        if s.error:
            value, error = s.describe(), s.error
            out.append(_fit(lambda o, v=value, e=error: f"{o}: {v} does not parse: {e}", s.origin))
    with_value = [s for s in ordered if s.networks]
    effective = with_value[0] if with_value else None
    facts = controller_managers[0] if controller_managers else None
    if effective is not None:
        eff = effective.describe()
        for s in with_value[1:]:
            if s.networks != effective.networks:
                value = s.describe()
                out.append(_fit(lambda a, b, v=value: f"cluster-cidr disagreement: {v} ({a}) vs {eff} ({b});"
                                " using the latter", s.origin, effective.origin))
        for s in ordered:
            if s.networks or s.error:
                continue
            if s.kind is SourceKind.KUBEADM:
                out.append(_fit(lambda b: "kubeadm-config has no podSubnet (kubeadm init without"
                                f" --pod-network-cidr) but the cluster-cidr is {eff} ({b})",
                                effective.origin))
            elif s.kind is SourceKind.CONTROLLER_MANAGER:
                out.append(_fit(lambda a, b: f"{a} is unset but the cluster-cidr is {eff} ({b}):"
                                " nodes get no podCIDR", s.origin, effective.origin))
    else:
        out.append("no cluster-cidr source answered (--cluster-cidr flag, kube-controller-manager pod,"
                   " k3s/RKE2 node-args, kubeadm-config, kube-proxy): the ConfigMap rule cannot compare")
    for f in controller_managers:
        out.extend(f.notes)
        if f.allocate_node_cidrs is not True and f.cluster_cidr.networks:
            out.append(_note(f"{_clip(f.describe(), 100)} runs without"
                             " --allocate-node-cidrs=true: nodes get no podCIDR from it"))
    mask_v4, mask_v6, mask_notes = node_mask_sizes(facts, effective.networks if effective else None)
    out.extend(mask_notes)
    service = next((s for s in sorted(services, key=lambda s: s.kind) if s.networks), None)
    if effective is not None and service is not None:
        hit = _overlap(effective.networks, service.networks)
        if hit:
            pods, svc = hit
            out.append(_fit(lambda a, b: f"pod range {pods} ({a}) overlaps service range {svc} ({b})",
                            effective.origin, service.origin))
    return Resolution(
        effective=effective,
        sources=tuple(ordered),
        service=service,
        allocate_node_cidrs=facts.allocate_node_cidrs if facts else None,
        mask_v4=mask_v4,
        mask_v6=mask_v6,
        notes=tuple(dict.fromkeys(out)),
    )


def _flannel_defines(ordered: Sequence[CidrSource], flannel: Sequence[CidrSource],
                     services: Sequence[CidrSource], controller_managers: Sequence[ControllerManagerFacts],
                     notes: Sequence[str]) -> Resolution:
    """No source holds a cluster-cidr: the first flannel ConfigMap with a Network defines it.

    The seed's cluster (``kubeadm init`` without ``--pod-network-cidr``): nothing but
    kube-flannel.yml names a pod network, and kube-controller-manager does not allocate,
    so flannel-guard does, from flannel's Network. With two flannel ConfigMaps whose
    Networks differ, the first in the guarded order wins (``kube-flannel`` before
    ``kube-system``: flannel's manifests moved to the ``kube-flannel`` namespace), with a note.
    """
    with_value = [f for f in flannel if f.networks]
    effective = with_value[0] if with_value else None
    out = [_note(n) for n in notes]
    if effective is None:
        out.append("no cluster-cidr source holds a value and no flannel ConfigMap exists yet: the"
                   " first flannel ConfigMap applied defines the cluster-cidr")
    else:
        out.append(_fit(lambda a: f"no cluster-cidr source holds a value: {effective.describe()} ({a}) is"
                        " the cluster-cidr; kube-controller-manager does not allocate node CIDRs,"
                        " flannel-guard does", effective.origin))
    for other in with_value[1:]:
        if other.networks != effective.networks:
            value = other.describe()
            first = with_value[0]
            chosen = first.describe()
            out.append(_fit(lambda a, b, v=value, w=chosen: f"flannel ConfigMaps disagree: {v}"
                            f" ({a}) vs {w} ({b}); using the latter", other.origin, first.origin))
    facts = controller_managers[0] if controller_managers else None
    for f in controller_managers:
        out.extend(f.notes)
    mask_v4, mask_v6, mask_notes = node_mask_sizes(facts, effective.networks if effective else None)
    out.extend(mask_notes)
    service = next((s for s in sorted(services, key=lambda s: s.kind) if s.networks), None)
    return Resolution(
        effective=effective, sources=(*ordered, *flannel), service=service,
        allocate_node_cidrs=facts.allocate_node_cidrs if facts else None,
        mask_v4=mask_v4, mask_v6=mask_v6, notes=tuple(dict.fromkeys(out)), flannel_defines=True,
    )



def resolution_from(
    flag: CidrSource | None,
    pods: Sequence[Mapping[str, Any]],
    kubeadm: Mapping[str, Any] | None,
    proxy: Mapping[str, Any] | None,
    flannel: Sequence[Mapping[str, Any]] = (),
    *,
    notes: Sequence[str] = (),
    pods_listed: bool = True,
    namespace: str = "kube-system",
    flannel_fallback: bool = True,
    servers: Sequence[Mapping[str, Any]] = (),
) -> Resolution:
    """Every source from the objects they are read from (raw JSON), resolved. Pure.

    ``pods``: the kube-controller-manager pods (label ``component=kube-controller-manager``);
    ``flannel``: the guarded flannel ConfigMaps in their guarded order; ``notes``: why a
    source is absent (not found, forbidden, unreachable), kept in ``absent``; ``servers``:
    the Nodes that may be k3s/RKE2 servers (:func:`webhook.core.nodeargs.from_nodes`), read
    after the kube-controller-manager pods, so a pod's masks win.
    """
    sources: list[CidrSource] = [flag] if flag is not None else []
    services: list[CidrSource] = []
    facts: list[ControllerManagerFacts] = []
    absent = list(notes)
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if labels.get("component") != "kube-controller-manager":
            continue  # the server filtered already; an emulator may not
        f = from_controller_manager_pod(pod)
        facts.append(f)
        sources.append(f.cluster_cidr)
        if f.service_cluster_ip_range:
            services.append(f.service_cluster_ip_range)
    if pods_listed and not facts:
        absent.append(f"no kube-controller-manager pod in {namespace}"
                      " (label component=kube-controller-manager)")
    distro, distro_notes = from_nodes(servers)
    for f in distro:
        facts.append(f)
        sources.append(f.cluster_cidr)
        if f.service_cluster_ip_range:
            services.append(f.service_cluster_ip_range)
    if kubeadm is not None:
        pod_subnet, service_subnet = from_kubeadm_config(kubeadm)
        if pod_subnet is not None:
            sources.append(pod_subnet)
        if service_subnet is not None:
            services.append(service_subnet)
    if proxy is not None and (cidr := from_kube_proxy(proxy)) is not None:
        sources.append(cidr)
    fallbacks = [c for c in map(from_flannel_configmap, flannel) if c is not None]
    resolution = resolve(sources, services=services, controller_managers=facts, notes=distro_notes,
                         flannel=fallbacks if flannel_fallback else None)
    return dataclasses.replace(resolution, absent=tuple(absent))

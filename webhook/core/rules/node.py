"""The Node rule: every podCIDR valid, inside the cluster-cidr, of the node mask size, unshared.

Upstream, kubernetes/kubernetes:

* ``pkg/apis/core/validation/validation.go`` ``ValidateNode``: each of
  ``spec.podCIDRs`` a valid CIDR, at most two, and two only when dual-stack
  (one per family); ``ValidateNodeUpdate``: "node updates may not change
  podCIDR except from \"\" to valid".
* ``pkg/apis/core/v1/conversion.go``: ``podCIDR`` and ``podCIDRs[0]`` are the
  same value; a Node that sets only ``podCIDR`` gets ``podCIDRs: [podCIDR]``.
* ``pkg/controller/nodeipam/ipam/range_allocator.go`` and ``cidrset``: each
  node gets one CIDR per cluster-cidr family, of ``--node-cidr-mask-size-ipv4``
  (default 24) / ``-ipv6`` (default 64), never the same twice.
* flannel ``pkg/subnet/kube/kube.go``: "pod cidrs should be IPv4/IPv6 only or
  dualstack"; "pod cidr not assigned" when a node has none.

Only what the request changes is judged: an UPDATE that leaves the podCIDRs
as they were (a label, a taint) is never refused for a pre-existing problem,
so that an operator is not locked out of fixing a node; it gets a warning.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from webhook.core.cidr import CidrError, IPNetwork, family_name, parse_cidr, within
from webhook.core.nodemodel import node_name, pod_cidrs
from webhook.core.rules.findings import ClusterView, Finding, Severity

__all__ = ["claimed_cidrs", "node_name", "pod_cidrs", "review_node"]


def _spec(obj: dict[str, Any] | None) -> dict[str, Any]:
    spec = (obj or {}).get("spec")
    return spec if isinstance(spec, dict) else {}


def claimed_cidrs(operation: str, obj: dict[str, Any] | None,
                  old: dict[str, Any] | None) -> list[IPNetwork]:
    """The podCIDRs this write gives the Node, which it must claim first: at most one per family.

    A CREATE that carries podCIDRs, or an UPDATE from none to some (the only change
    the API server allows: ``ValidateNodeUpdate`` in pkg/apis/core/validation). An
    UPDATE that leaves them as they were claims nothing; text that is not a network
    address claims nothing (the rules refuse it).
    """
    if operation not in ("CREATE", "UPDATE"):
        return []
    if operation == "UPDATE" and pod_cidrs(old):
        return []
    out: list[IPNetwork] = []
    for text in pod_cidrs(obj)[:2]:
        try:
            parsed = parse_cidr(text)
        except CidrError:
            continue
        if not parsed.host_bits_set and all(n.version != parsed.network.version for n in out):
            out.append(parsed.network)
    return out


def _patch_cmd(name: str, cidrs: list[IPNetwork]) -> str:
    body = json.dumps({"spec": {"podCIDR": str(cidrs[0]), "podCIDRs": [str(c) for c in cidrs]}},
                      separators=(",", ":"))
    return f"kubectl patch node {name} -p '{body}'"


def suggest_cidrs(view: ClusterView) -> list[IPNetwork] | None:
    """A free CIDR per cluster-cidr family, in the cluster's order; None if any family is full."""
    out: list[IPNetwork] = []
    for net in view.cluster_cidr or ():
        free = view.nodes.first_free(net, view.mask_for(net.version))
        if free is None:
            return None
        out.append(free)
    return out or None


def review_node(
    operation: str,
    obj: dict[str, Any] | None,
    old: dict[str, Any] | None,
    view: ClusterView,
) -> list[Finding]:
    """Judge a Node CREATE or UPDATE (DELETE frees its CIDRs elsewhere, never refused)."""
    if operation not in ("CREATE", "UPDATE"):
        return []
    name = node_name(obj) or "NODE"
    if len(name) > 253:  # no Node has such a name (the API server refuses it): never echo it whole
        name = name[:60] + "…"
    return _review_annotations(name, obj, old) + _review_cidrs(operation, name, obj, old, view)


# flannel pkg/subnet/kube/annotations.go (default prefix flannel.alpha.coreos.com/): the
# addresses flannel reads back with ip.ParseIP4 / ParseIP6 (kube.go), and the overrides users set.
FLANNEL_IP_ANNOTATIONS = {
    "flannel.alpha.coreos.com/public-ip": 4,
    "flannel.alpha.coreos.com/public-ip-overwrite": 4,
    "flannel.alpha.coreos.com/node-public-ip": 4,
    "flannel.alpha.coreos.com/public-ipv6": 6,
    "flannel.alpha.coreos.com/public-ipv6-overwrite": 6,
    "flannel.alpha.coreos.com/node-public-ipv6": 6,
}


def _annotations(obj: dict[str, Any] | None) -> dict[str, Any]:
    meta = (obj or {}).get("metadata")
    ann = meta.get("annotations") if isinstance(meta, dict) else None
    return ann if isinstance(ann, dict) else {}


def _review_annotations(name: str, obj: dict[str, Any] | None,
                        old: dict[str, Any] | None) -> list[Finding]:
    """flannel's public-ip annotations must be IP addresses of their family (field report #12)."""
    new, before = _annotations(obj), _annotations(old)
    out = []
    for key, version in FLANNEL_IP_ANNOTATIONS.items():
        value = new.get(key)
        if value is None or value == before.get(key) or value == "":
            continue
        try:
            ok = ipaddress.ip_address(value).version == version if isinstance(value, str) else False
        except ValueError:
            ok = False
        if not ok:
            out.append(Finding(
                Severity.ERROR, "InvalidPublicIP",
                f"node {name}: annotation {key} is {str(value)[:60]!r}, not an IPv{version} address.",
                "flannel fails on this node with 'error looking up interface' or cannot parse its"
                " public IP (flannel#712, #1978).",
                f"`kubectl annotate node {name} --overwrite {key}=<the node's IPv{version} address>`,"
                f" or remove it with `kubectl annotate node {name} {key}-`.",
            ))
    return out


def _review_cidrs(operation: str, name: str, obj: dict[str, Any] | None, old: dict[str, Any] | None,
                  view: ClusterView) -> list[Finding]:
    texts = pod_cidrs(obj)
    old_texts = pod_cidrs(old) if operation == "UPDATE" else []
    if operation == "UPDATE" and old_texts:
        if texts != old_texts:
            return [Finding(
                Severity.ERROR, "PodCIDRImmutable",
                f"node {name}: podCIDRs cannot change once set ({','.join(old_texts)[:100]} ->"
                f" {','.join(texts)[:100] or 'none'}).",
                "The API server refuses it too: 'node updates may not change podCIDR except"
                " from \"\" to valid' (pkg/apis/core/validation).",
                f"to move the node to another subnet: `kubectl drain {name}`, `kubectl delete node"
                f" {name}`, restart its kubelet so it registers again and gets a new podCIDR.",
            )]
        # Unchanged podCIDRs: judge, but only warn.
        return [
            Finding(Severity.WARNING, f.code, f"pre-existing: {f.summary}", f.detail, f.fix)
            for f in _judge(name, texts, _dropped(obj), view)
            if f.severity is Severity.ERROR
        ]
    if not texts:
        return []
    found = _judge(name, texts, _dropped(obj), view)
    before = view.departed.get(name)
    if operation == "CREATE" and before and [str(c) for c in before] != texts:
        found.append(Finding(
            Severity.WARNING, "RejoinedWithNewCIDR",
            f"node {name} rejoins with {','.join(texts)[:100]}; before it was deleted it had"
            f" {','.join(map(str, before))}: restart flannel on it to drop the old subnet's routes.",
            "Routes and pods of the old subnet can linger on the host (rke2#11170, flannel#1850).",
        ))
    return found


class _LazyFix:
    """The fix line names a free CIDR; finding one is only worth it when something is wrong."""

    def __init__(self, name: str, view: ClusterView) -> None:
        self._name = name
        self._view = view
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            suggestion = suggest_cidrs(self._view)
            self._text = "leave podCIDR empty and let it be allocated"
            if suggestion:
                self._text += f", or use {_patch_cmd(self._name, suggestion)}"
        return self._text


def _dropped(obj: dict[str, Any] | None) -> tuple[str, str] | None:
    """(podCIDR, podCIDRs[0]) when they differ as written (the API server keeps podCIDR)."""
    spec = _spec(obj)
    single, many = spec.get("podCIDR"), spec.get("podCIDRs")
    if isinstance(single, str) and single and isinstance(many, list) and many and many[0] != single:
        return single, str(many[0])
    return None


def _judge(name: str, texts: list[str], single: object, view: ClusterView) -> list[Finding]:
    out: list[Finding] = []
    lazy = _LazyFix(name, view)
    listed = single[1] if isinstance(single, tuple) else None
    if listed:
        # pkg/apis/core/v1/conversion.go: when podCIDR and podCIDRs[0] differ, podCIDR is
        # authoritative and the stored podCIDRs become [podCIDR]; a webhook never sees this.
        out.append(Finding(
            Severity.WARNING, "PodCIDRsDropped",
            f"node {name}: spec.podCIDR {texts[0][:50]!r} is not spec.podCIDRs[0] {listed[:50]!r}:"
            " the API server keeps podCIDR and stores podCIDRs as [podCIDR].",
            "pkg/apis/core/v1/conversion.go Convert_v1_NodeSpec_To_core_NodeSpec.",
        ))
    nets: list[IPNetwork] = []
    for text in texts[:3]:
        try:
            parsed = parse_cidr(text)
        except CidrError as e:
            out.append(Finding(Severity.ERROR, "InvalidPodCIDR",
                               f"node {name}: podCIDR is not a valid CIDR: {e}."))
            continue
        if parsed.host_bits_set:
            out.append(Finding(
                Severity.ERROR, "InvalidPodCIDR",
                f"node {name}: podCIDR {text} has host bits set; its network is {parsed.network}.",
                ))
            continue
        nets.append(parsed.network)
    if len(texts) > 2:
        out.append(Finding(
            Severity.ERROR, "TooManyPodCIDRs",
            f"node {name}: {len(texts)} podCIDRs; at most one IPv4 and one IPv6.",
            "flannel fails with 'pod cidrs should be IPv4/IPv6 only or dualstack'."))
    versions = [n.version for n in nets]
    if len(set(versions)) != len(versions):
        out.append(Finding(
            Severity.ERROR, "DuplicateFamily",
            f"node {name}: two podCIDRs of the same family ({', '.join(texts[:2])}).",
            "At most one per IP family (pkg/apis/core/validation ValidateNode)."))
    if len(set(versions)) == len(versions) == len(texts):
        out.extend(_family_order(name, nets, view))
    for net in nets:
        out.extend(_judge_one(name, net, view))
    if any(f.severity is Severity.ERROR for f in out):
        text = str(lazy)
        out = [Finding(f.severity, f.code, f.summary, f.detail, f.fix or text) for f in out]
    if view.cluster_cidr and nets and not out:
        missing = [c for c in view.cluster_cidr if c.version not in versions]
        if missing:
            out.append(Finding(
                Severity.WARNING, "MissingFamily",
                f"node {name} has no {family_name(missing[0])} podCIDR but the cluster-cidr"
                f" includes {missing[0]}.",
            ))
    return out


def _family_order(name: str, nets: list[IPNetwork], view: ClusterView) -> list[Finding]:
    """podCIDRs[i] is of the family of the i-th cluster-cidr, as kube-controller-manager pairs them.

    ``pkg/controller/nodeipam/ipam/range_allocator.go`` ``occupyCIDRs`` marks
    ``podCIDRs[idx]`` in ``cidrSets[idx]`` by position: a node whose families are in another
    order (or an IPv6-only node when the cluster-cidr starts with IPv4) fails with "failed to
    mark cidr[...] at idx [0] as occupied", and at start-up ``NewCIDRRangeAllocator`` returns
    that error, so the range allocator does not start. A family the cluster-cidr lacks is
    FamilyNotInCluster instead.
    """
    cluster = list(view.cluster_cidr or ())
    for i, net in enumerate(nets):
        if view.cidr_of_family(net.version) is None:
            continue
        if i >= len(cluster) or cluster[i].version != net.version:
            order = ",".join(str(n) for n in nets)
            return [Finding(
                Severity.ERROR, "FamilyOrder",
                f"node {name}: podCIDRs {order} are not in the cluster-cidr's family order"
                f" ({view.describe_cidr()}): podCIDRs[{i}] is {family_name(net)}.",
                "kube-controller-manager pairs podCIDRs[i] with its i-th --cluster-cidr"
                " (pkg/controller/nodeipam/ipam/range_allocator.go occupyCIDRs); its range"
                " allocator then fails with 'failed to mark cidr ... as occupied'.")]
    return []


def _judge_one(name: str, net: IPNetwork, view: ClusterView) -> list[Finding]:
    fam = family_name(net)
    source = f"(cluster-cidr from {view.cidr_source})"
    want = view.cidr_of_family(net.version)
    out: list[Finding] = []
    if view.cluster_cidr and want is None:
        return [Finding(
            Severity.ERROR, "FamilyNotInCluster",
            f"node {name}: podCIDR {net} is {fam} but the cluster-cidr {view.describe_cidr()}"
            f" has no {fam} part {source}.")]
    mask = view.mask_for(net.version)
    if want is not None and not within(net, want):
        out.append(Finding(
            Severity.ERROR, "OutsideClusterCIDR",
            f"node {name}: podCIDR {net} is outside the cluster-cidr {want} {source}.",
            f"flannel fails with 'subnet \"{want}\" specified in the flannel net config"
            f" doesn't contain \"{net}\" PodCIDR of the \"{name}\" node'."))
    if net.prefixlen != mask:
        whole = " (the whole cluster range: every node would share it)" if (
            want is not None and net.prefixlen <= want.prefixlen) else ""
        out.append(Finding(
            Severity.ERROR, "WrongSize",
            f"node {name}: podCIDR {net} is a /{net.prefixlen}, but node CIDRs are"
            f" /{mask}{whole}.",
            f"kube-controller-manager gives each node a /{mask} (--node-cidr-mask-size"
            f"{'-ipv6' if net.version == 6 else ''})."))
    for other, cidr in view.nodes.overlapping(net, exclude=name, limit=3):
        out.append(Finding(
            Severity.ERROR, "OverlapsNode",
            f"node {name}: podCIDR {net} overlaps node {other}'s {cidr}.",
            "Pods on the two nodes would get the same IPs and traffic between them breaks."))
    return out

"""Where the cluster-cidr comes from: pure parsers of every source.

The values they return are :mod:`webhook.core.cidrsource`'s; :mod:`webhook.core.resolve`
reconciles them.

Nothing here does I/O: :mod:`webhook.kube.cluster` fetches the objects and hands the
dicts in. Each parser keeps the *origin* of what it found, so that a
disagreement can name both sides. A value that does not parse becomes a
:class:`CidrSource` with ``error`` set (and so a note), never an exception.

Sources, in the order in which they win (:data:`ORDER`):

1. ``--cluster-cidr`` flag / ``FLANNEL_GUARD_CLUSTER_CIDR`` (an explicit override);
2. the kube-controller-manager pod's flags (kube-system, label
   ``component=kube-controller-manager``, a static pod written by kubeadm
   ``cmd/kubeadm/app/phases/controlplane/manifests.go``): ``--cluster-cidr``,
   ``--allocate-node-cidrs``, ``--node-cidr-mask-size[-ipv4|-ipv6]``,
   ``--service-cluster-ip-range`` (``cmd/kube-controller-manager/app/options``);
3. the ``kubeadm-config`` ConfigMap, key ``ClusterConfiguration``: YAML of
   ``kubeadm.k8s.io/v1beta2|v1beta3|v1beta4`` ``ClusterConfiguration``, whose
   ``networking`` (``podSubnet``, ``serviceSubnet``, ``dnsDomain``) is the same in
   all three (``cmd/kubeadm/app/apis/kubeadm/v1beta*/types.go``; v1beta4 changed
   ``extraArgs`` to a list of name/value, not ``networking``);
4. the ``kube-proxy`` ConfigMap, key ``config.conf``: YAML of
   ``kubeproxy.config.k8s.io/v1alpha1`` ``KubeProxyConfiguration``, ``clusterCIDR``
   (optional: kubeadm writes ``""`` when it has no podSubnet).

Every value may be dual-stack, ``"a,b"`` (one CIDR per family), as
kube-controller-manager reads it (:func:`webhook.core.cidr.parse_cidr_list`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from webhook.core.cidr import IPNetwork
from webhook.core.cidrsource import (
    _DEFAULT_MASK_V4,
    _DEFAULT_MASK_V6,
    ORDER,
    CidrSource,
    ControllerManagerFacts,
    Resolution,
    SourceKind,
    _clip,
    _note,
    _source,
    flag_source,
)

__all__ = [
    "KUBEADM_API_VERSIONS",
    "ORDER",
    "CidrSource",
    "ControllerManagerFacts",
    "Resolution",
    "SourceKind",
    "flag_source",
    "from_controller_manager_pod",
    "from_flannel_configmap",
    "from_kube_proxy",
    "from_kubeadm_config",
    "node_mask_sizes",
]

#: The kubeadm API versions whose ClusterConfiguration we have read the types of.
KUBEADM_API_VERSIONS = ("kubeadm.k8s.io/v1beta2", "kubeadm.k8s.io/v1beta3", "kubeadm.k8s.io/v1beta4")


_BOOL_FLAGS = frozenset({"allocate-node-cidrs"})
_WANTED = frozenset({
    "cluster-cidr", "allocate-node-cidrs", "node-cidr-mask-size", "node-cidr-mask-size-ipv4",
    "node-cidr-mask-size-ipv6", "service-cluster-ip-range",
})
# Go strconv.ParseBool, which pflag's bool flags use.
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_INT_RE = re.compile(r"^[+-]?[0-9]{1,4}$")


def _argv(pod: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(pod name, command + args of the kube-controller-manager container).

    The container is the one named, or whose command starts with,
    ``kube-controller-manager``; failing that, every container's argv in turn.
    """
    meta = pod.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    name = f"{meta.get('namespace') or 'kube-system'}/{meta.get('name') or '?'}"
    spec = pod.get("spec")
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    argvs: list[tuple[bool, list[str]]] = []
    for c in containers if isinstance(containers, list) else []:
        if not isinstance(c, Mapping):
            continue
        argv = [a for key in ("command", "args") for a in (c.get(key) or []) if isinstance(a, str)]
        is_kcm = c.get("name") == "kube-controller-manager" or bool(
            argv and argv[0].rsplit("/", 1)[-1] == "kube-controller-manager")
        argvs.append((is_kcm, argv))
    chosen = [argv for is_kcm, argv in argvs if is_kcm] or [argv for _, argv in argvs]
    return name, [a for argv in chosen for a in argv]


def _scan_flags(argv: Sequence[str]) -> dict[str, str]:
    """pflag's reading of long flags: ``--f=v``, ``--f v`` (not for bools), bare ``--bool``.

    The last occurrence wins, as pflag sets a flag again for every occurrence.
    """
    found: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        if not arg.startswith("--"):
            continue
        name, eq, value = arg[2:].partition("=")
        if name not in _WANTED:
            continue
        if eq:
            found[name] = value
        elif name in _BOOL_FLAGS:
            found[name] = "true"
        elif i < len(argv):
            found[name] = argv[i]
            i += 1
        else:
            found[name] = ""
    return found


def from_controller_manager_pod(pod: Mapping[str, Any]) -> ControllerManagerFacts:
    """Read a kube-controller-manager pod's ``spec.containers[*].command`` + ``args``.

    kubeadm's static pod (``/etc/kubernetes/manifests/kube-controller-manager.yaml``)
    puts every flag in ``command`` as ``--flag=value``; other installers use
    ``args`` and the ``--flag value`` form. Without ``--cluster-cidr`` the result's
    ``cluster_cidr`` has no networks (the controller-manager then allocates nothing).
    """
    pod_name, argv = _argv(pod)
    flags = _scan_flags(argv)
    where = f"kube-controller-manager pod {_clip(pod_name, 80)}"
    notes: list[str] = []

    allocate: bool | None = None
    if "allocate-node-cidrs" in flags:
        raw = flags["allocate-node-cidrs"]
        if raw in _GO_TRUE:
            allocate = True
        elif raw in _GO_FALSE:
            allocate = False
        else:
            notes.append(_note(f"{where}: --allocate-node-cidrs={_clip(raw, 20)!r} is not a boolean"))

    masks: dict[str, int | None] = {}
    for flag in ("node-cidr-mask-size", "node-cidr-mask-size-ipv4", "node-cidr-mask-size-ipv6"):
        raw = flags.get(flag)
        masks[flag] = None
        if raw is None:
            continue
        if _INT_RE.match(raw) and 0 <= int(raw) <= 128:
            masks[flag] = int(raw)
        else:
            notes.append(_note(f"{where}: --{flag}={_clip(raw, 20)!r} is not a mask size"))

    cidr = _source(f"{where} --cluster-cidr", flags.get("cluster-cidr"), SourceKind.CONTROLLER_MANAGER)
    service = None
    if "service-cluster-ip-range" in flags:
        service = _source(f"{where} --service-cluster-ip-range", flags["service-cluster-ip-range"],
                          SourceKind.CONTROLLER_MANAGER)
    return ControllerManagerFacts(
        pod=pod_name,
        cluster_cidr=cidr,
        allocate_node_cidrs=allocate,
        node_cidr_mask_size=masks["node-cidr-mask-size"],
        node_cidr_mask_size_ipv4=masks["node-cidr-mask-size-ipv4"],
        node_cidr_mask_size_ipv6=masks["node-cidr-mask-size-ipv6"],
        service_cluster_ip_range=service,
        notes=tuple(notes),
    )


def node_mask_sizes(
    facts: ControllerManagerFacts | None, cluster_cidr: Sequence[IPNetwork] | None
) -> tuple[int, int, tuple[str, ...]]:
    """(IPv4 mask, IPv6 mask, notes) as kube-controller-manager derives them.

    ``cmd/kube-controller-manager/app/core.go`` ``setNodeCIDRMaskSizes``: defaults
    24 / 64; dual-stack refuses ``--node-cidr-mask-size`` and reads the per-family
    flags; single-stack lets ``--node-cidr-mask-size`` win for both and refuses it
    together with a per-family flag.
    """
    v4, v6 = _DEFAULT_MASK_V4, _DEFAULT_MASK_V6
    if facts is None:
        return v4, v6, ()
    both, m4, m6 = facts.node_cidr_mask_size, facts.node_cidr_mask_size_ipv4, facts.node_cidr_mask_size_ipv6
    who = facts.describe()
    notes: list[str] = []
    dual = cluster_cidr is not None and len(cluster_cidr) > 1
    if dual and both is not None:
        notes.append(_note(f"{who}: --node-cidr-mask-size is not allowed with a dual-stack"
                           " cluster-cidr; kube-controller-manager refuses to start"))
    elif both is not None:
        if m4 is not None or m6 is not None:
            notes.append(_note(f"{who}: --node-cidr-mask-size with --node-cidr-mask-size-ipv4/-ipv6;"
                               " kube-controller-manager refuses to start"))
        return both, both, tuple(notes)
    if m4 is not None:
        v4 = m4
    if m6 is not None:
        v6 = m6
    return v4, v6, tuple(notes)


# --- kubeadm-config ------------------------------------------------------------------------


def _data(configmap: Mapping[str, Any], key: str) -> str | None:
    data = configmap.get("data")
    value = data.get(key) if isinstance(data, Mapping) else None
    return value if isinstance(value, str) else None


def _yaml_doc(text: str) -> tuple[Mapping[str, Any] | None, str | None]:
    """The first YAML mapping in ``text``, or an error."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return None, f"not YAML: {_clip(str(e).splitlines()[0] if str(e) else type(e).__name__, 80)}"
    if not isinstance(doc, Mapping):
        return None, f"not a YAML mapping but {type(doc).__name__}"
    return doc, None


def from_kubeadm_config(configmap: Mapping[str, Any]) -> tuple[CidrSource | None, CidrSource | None]:
    """(podSubnet, serviceSubnet) from kube-system/kubeadm-config's ``ClusterConfiguration``.

    kubeadm (``cmd/kubeadm/app/phases/uploadconfig``) stores the ClusterConfiguration
    as YAML under the data key ``ClusterConfiguration``; ``networking.podSubnet`` is
    what ``kubeadm init --pod-network-cidr`` set, absent when it was not given (the
    controller-manager then gets no ``--cluster-cidr`` / ``--allocate-node-cidrs``).
    Returns (None, None) when the key is missing; a podSubnet source without
    networks when the value is unset or does not parse (``error`` says which).
    """
    origin = "kubeadm-config ClusterConfiguration.networking"
    text = _data(configmap, "ClusterConfiguration")
    if text is None:
        return None, None
    doc, error = _yaml_doc(text)
    if doc is None:
        return CidrSource(f"{origin}.podSubnet", (), text[:200], SourceKind.KUBEADM, error), None
    api_version = doc.get("apiVersion")
    if api_version not in KUBEADM_API_VERSIONS:
        error = f"apiVersion {_clip(str(api_version), 40)!r} is not one of v1beta2/3/4"
    networking = doc.get("networking")
    networking = networking if isinstance(networking, Mapping) else {}
    pod = _source(f"{origin}.podSubnet", networking.get("podSubnet"), SourceKind.KUBEADM)
    if error and not pod.networks:
        pod = CidrSource(pod.origin, (), pod.raw, SourceKind.KUBEADM, pod.error or error)
    service = None
    if networking.get("serviceSubnet") not in (None, ""):
        service = _source(f"{origin}.serviceSubnet", networking.get("serviceSubnet"), SourceKind.KUBEADM)
    return pod, service


# --- kube-proxy ------------------------------------------------------------------------------


def from_kube_proxy(configmap: Mapping[str, Any]) -> CidrSource | None:
    """``clusterCIDR`` from kube-system/kube-proxy's ``config.conf`` (KubeProxyConfiguration YAML).

    ``pkg/proxy/apis/config/v1alpha1``: ``clusterCIDR`` is optional (kube-proxy uses
    it to tell pod traffic apart); kubeadm writes it from podSubnet, ``""`` when
    unset. None when the key is missing or the value is empty: it then says nothing.
    """
    origin = "kube-proxy config.conf clusterCIDR"
    text = _data(configmap, "config.conf")
    if text is None:
        return None
    doc, error = _yaml_doc(text)
    if doc is None:
        return CidrSource(origin, (), text[:200], SourceKind.KUBE_PROXY, error)
    raw = doc.get("clusterCIDR")
    if raw is None or raw == "":
        return None
    return _source(origin, raw, SourceKind.KUBE_PROXY)


# --- the flannel ConfigMap, as a last source -------------------------------------------------


def from_flannel_configmap(configmap: Mapping[str, Any]) -> CidrSource | None:
    """``Network`` (and ``IPv6Network`` with ``EnableIPv6``) of a flannel ConfigMap's net-conf.json.

    Read as flannel reads it (:func:`webhook.core.rules.flannel.parse_net_conf`). None when
    the ConfigMap has no net-conf.json; a source without networks when flannel would
    refuse it. The order is flannel's own: IPv4 first, as flannel's ``Network`` is primary.
    """
    from webhook.core.rules.flannel import parse_net_conf  # the rules' parser: one reading of flannel

    meta = configmap.get("metadata") if isinstance(configmap.get("metadata"), Mapping) else {}
    origin = (f"flannel ConfigMap {_clip(str(meta.get('namespace', '')), 63)}/"
              f"{_clip(str(meta.get('name', '')), 63)} net-conf.json Network")
    text = _data(configmap, "net-conf.json")
    if text is None:
        return None
    conf = parse_net_conf(text[:65536]).conf
    ref = f"{meta.get('namespace', '')}/{meta.get('name', '')}"[:256]
    if conf is None:
        return CidrSource(origin, (), text[:200], SourceKind.FLANNEL, "flannel cannot parse it", ref)
    nets = tuple(p.network for p, on in ((conf.network, conf.enable_ipv4),
                                         (conf.ipv6_network, conf.enable_ipv6)) if p is not None and on)
    raw = ",".join(map(str, nets))
    return CidrSource(origin, nets, raw, SourceKind.FLANNEL, ref=ref)

"""The flannel ConfigMap rule: ``net-conf.json`` must be what flannel accepts and match the cluster.

Why equality: kubeadm's ``--pod-network-cidr`` becomes kube-controller-manager's
``--cluster-cidr``, which hands out every Node's podCIDR; flannel
(``pkg/subnet/kube/kube.go``, ``AcquireLease``) refuses a node whose podCIDR
its ``Network`` does not contain. flannel's own docs and kube-flannel.yml ask
for ``Network`` to be the cluster-cidr; ``--network-match contains`` relaxes
this to what flannel strictly needs.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from webhook.core.cidr import IPNetwork
from webhook.core.rules.findings import ClusterView, Finding, NetworkMatch, RuleSettings, Severity
from webhook.core.rules.flannel import NET_CONF_MAX_BYTES, NetConf, NetConfResult, parse_net_conf
from webhook.core.rules.gojson import MAX_DEPTH, too_deep

__all__ = ["CNI_CONF_KEY", "CNI_CONF_MAX_BYTES", "NET_CONF_KEY", "is_flannel_configmap",
           "review_configmap"]

NET_CONF_KEY = "net-conf.json"
CNI_CONF_KEY = "cni-conf.json"
# kube-flannel.yml's cni-conf.json is about 300 bytes; past this it is refused unread (the
# JSON parse of a 1 MiB value would hold the event loop for tens of milliseconds).
CNI_CONF_MAX_BYTES = 64 * 1024
_MAX_NAMED = 5


def _meta(obj: dict[str, Any] | None) -> dict[str, Any]:
    meta = (obj or {}).get("metadata")
    return meta if isinstance(meta, dict) else {}


def is_flannel_configmap(obj: dict[str, Any] | None, settings: RuleSettings,
                         namespace: str | None = None) -> bool:
    """Whether ``obj`` is one of the guarded flannel ConfigMaps."""
    meta = _meta(obj)
    ns, name = meta.get("namespace"), meta.get("name", "")
    # A name or namespace that is not a string names no ConfigMap the API server would store
    # (and a list is not even hashable): simply not guarded.
    if not isinstance(name, str) or not isinstance(ns, str | None):
        return False
    return (ns or namespace or "", name) in settings.flannel_configmaps


def _data(obj: dict[str, Any] | None) -> dict[str, Any]:
    data = (obj or {}).get("data")
    return data if isinstance(data, dict) else {}


def review_configmap(
    operation: str,
    obj: dict[str, Any] | None,
    old: dict[str, Any] | None,
    view: ClusterView,
    settings: RuleSettings,
    namespace: str | None = None,
) -> list[Finding]:
    """Judge a CREATE, UPDATE or DELETE of a flannel ConfigMap (``namespace``: the request's)."""
    if operation == "DELETE":
        return _review_delete(old, settings)
    if operation not in ("CREATE", "UPDATE"):
        return []
    data = _data(obj)
    text = data.get(NET_CONF_KEY)
    if text is None:
        return [Finding(
            Severity.ERROR, "MissingNetConf",
            f"the flannel ConfigMap has no {NET_CONF_KEY} key.",
            f"flannel reads /etc/kube-flannel/{NET_CONF_KEY} from it and fails at start"
            " with 'failed to read net conf'.",
            f"add data.{NET_CONF_KEY} as in kube-flannel.yml, with \"Network\": "
            f"\"{view.describe_cidr().split(',')[0]}\".",
        )]
    if not isinstance(text, str):
        return [Finding(Severity.ERROR, "MissingNetConf", f"data.{NET_CONF_KEY} must be a string.")]
    parsed = _parsed(text, settings.arch)
    findings = [_with_known_cidr(f, view) for f in parsed.findings]
    findings.extend(_review_cni_conf(data))
    if parsed.conf is None:
        return findings
    meta = _meta(obj)
    ident = f"{meta.get('namespace') or namespace or ''}/{meta.get('name', '')}"
    findings.extend(_review_networks(parsed.conf, view, settings, ident))
    if operation == "UPDATE" or len(view.nodes):
        findings.extend(_review_stranding(parsed.conf, obj, old, view, operation, settings))
    return findings


@functools.lru_cache(maxsize=64)
def _parsed_within_cap(text: str, arch: str) -> NetConfResult:
    return parse_net_conf(text, arch=arch)


def _parsed(text: str, arch: str) -> NetConfResult:
    """``parse_net_conf``, remembered by text: the flannel ConfigMap rarely changes between reviews.

    Only texts within flannel-guard's cap are kept (64 of at most 4,096 characters each); a longer one is
    refused by the parser at once. The result is shared between reviews and only read here.
    """
    if len(text) > NET_CONF_MAX_BYTES:
        return parse_net_conf(text, arch=arch)
    return _parsed_within_cap(text, arch)


def _with_known_cidr(finding: Finding, view: ClusterView) -> Finding:
    """The parser does not know the cluster-cidr; a fix that asks for it gets the value."""
    if "<the cluster-cidr>" not in finding.fix:
        return finding
    version = 6 if "IPv6Network" in finding.summary else 4
    want = view.cidr_of_family(version)
    if want is None:
        return finding
    return Finding(finding.severity, finding.code, finding.summary, finding.detail,
                   finding.fix.replace("<the cluster-cidr>", str(want)))


def _review_delete(old: dict[str, Any] | None, settings: RuleSettings) -> list[Finding]:
    annotations = _meta(old).get("annotations") or {}
    if isinstance(annotations, dict) and annotations.get(settings.allow_delete_annotation) == "true":
        return [Finding(
            Severity.WARNING, "DeleteAllowed",
            "flannel ConfigMap deleted with the override annotation: flannel cannot restart"
            " until it is recreated.",
        )]
    meta = _meta(old)
    return [Finding(
        Severity.ERROR, "DeleteRefused",
        "deleting the flannel ConfigMap takes the whole cluster's pod network down:"
        " every flannel pod that restarts fails with 'failed to read net conf'.",
        "",
        f"if you mean it, first `kubectl -n {meta.get('namespace', 'kube-flannel')} annotate"
        f" configmap {meta.get('name', 'kube-flannel-cfg')} {settings.allow_delete_annotation}=true`,"
        " then delete it again.",
    )]


def _review_cni_conf(data: dict[str, Any]) -> list[Finding]:
    """``cni-conf.json`` is copied to /etc/cni/net.d by the install-cni container."""
    text = data.get(CNI_CONF_KEY)
    if text is None:
        return []
    fix = 'keep the "plugins" list of kube-flannel.yml: [{"type": "flannel", ...}, {"type": "portmap", ...}].'
    if isinstance(text, str) and len(text) > CNI_CONF_MAX_BYTES // 4 and \
            len(text.encode("utf-8", "surrogatepass")) > CNI_CONF_MAX_BYTES:
        return [Finding(
            Severity.ERROR, "CNIConfTooLarge",
            f"{CNI_CONF_KEY} is {len(text.encode('utf-8', 'surrogatepass')):,} bytes; flannel-guard"
            f" reads at most {CNI_CONF_MAX_BYTES:,}.",
            "kube-flannel.yml's is about 300 bytes: the flannel and portmap plugins.", fix,
        )]
    try:
        if isinstance(text, str) and too_deep(text):  # a fixed bound, not the recursion limit
            raise RecursionError(f"nested more than {MAX_DEPTH} levels")
        doc = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError) as e:  # ValueError: also a 4,300-digit-plus integer
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        return [Finding(
            Severity.ERROR, "CNIConfNotJSON", f"{CNI_CONF_KEY} is not valid JSON{where}.",
            "the kubelet skips an unparsable CNI config and pods on every node stay ContainerCreating.",
            fix,
        )]
    if not isinstance(doc, dict):
        return [Finding(Severity.ERROR, "CNIConfNotJSON", f"{CNI_CONF_KEY} must be a JSON object.",
                        fix=fix)]
    plugins = doc.get("plugins") if isinstance(doc.get("plugins"), list) else [doc]
    if not any(isinstance(p, dict) and p.get("type") == "flannel" for p in plugins):
        return [Finding(
            Severity.ERROR, "CNIConfNoFlannel",
            f"{CNI_CONF_KEY} has no plugin of type \"flannel\".",
            "Pods would not be attached to the flannel network.", fix,
        )]
    return []


def _review_networks(conf: NetConf, view: ClusterView, settings: RuleSettings,
                     ident: str = "") -> list[Finding]:
    """``Network`` / ``IPv6Network`` against the cluster-cidr, family by family.

    When no source holds a cluster-cidr, this ConfigMap's Network *is* it (the seed's
    cluster: nothing but kube-flannel.yml names a pod network): nothing to compare with,
    only stranding is judged. A second flannel ConfigMap is compared with the first.
    """
    if view.flannel_defines and (view.defined_by in (None, ident)):
        networks = ",".join(str(p.network) for p, on in ((conf.network, conf.enable_ipv4),
                                                        (conf.ipv6_network, conf.enable_ipv6)) if p and on)
        return [Finding(
            Severity.WARNING, "FlannelDefinesClusterCIDR",
            f"no cluster-cidr source holds a value: flannel's {networks or 'Network'} is the"
            " cluster-cidr; kube-controller-manager does not allocate node CIDRs, flannel-guard does.",
        )]
    if not view.cluster_cidr:
        return [Finding(
            settings.unknown_cidr, "ClusterCIDRUnknown",
            "the cluster-cidr is unknown, so flannel's Network cannot be checked.",
            "No source answered (--cluster-cidr, kube-controller-manager, kubeadm-config,"
            " kube-proxy).",
            "start flannel-guard with --cluster-cidr, or set kube-controller-manager"
            " --cluster-cidr (kubeadm: networking.podSubnet).",
        )]
    out: list[Finding] = []
    source = f"(cluster-cidr from {view.cidr_source})"
    for version, key, enabled, written in (
        (4, "Network", conf.enable_ipv4, conf.network),
        (6, "IPv6Network", conf.enable_ipv6, conf.ipv6_network),
    ):
        want = view.cidr_of_family(version)
        enable_key = "EnableIPv4" if version == 4 else "EnableIPv6"
        if want is None:
            if enabled:
                out.append(Finding(
                    Severity.ERROR, "FamilyNotInCluster",
                    f"flannel has {family_name_v(version)} enabled but the cluster-cidr"
                    f" {view.describe_cidr()} has no {family_name_v(version)} part {source}.",
                    f"Nodes get no {family_name_v(version)} podCIDR, and flannel fails with"
                    f" 'missing {family_name_v(version)} address on n.Spec.PodCIDRs'.",
                    f'set "{enable_key}": false, or make the cluster dual-stack first.',
                ))
            continue
        if not enabled:
            out.append(Finding(
                Severity.ERROR, "FamilyNotInFlannel",
                f"the cluster-cidr {view.describe_cidr()} has an {family_name_v(version)} part"
                f" {want} but flannel has {enable_key} off {source}.",
                f"Pods would get no {family_name_v(version)} connectivity across nodes.",
                f'set "{enable_key}": true and "{key}": "{want}".',
            ))
            continue
        if written is None:
            continue  # MissingNetwork was already reported by the parser.
        out.extend(_compare(key, written.network, want, view, settings, source, ident))
    return out


def family_name_v(version: int) -> str:
    return "IPv4" if version == 4 else "IPv6"


#: Where each guarded ConfigMap's net-conf.json is written (webhook.core.constants.FLANNEL_CONFIGMAPS).
_HOMES = {
    "kube-flannel-cfg": "in kube-flannel.yml (ConfigMap kube-flannel-cfg, net-conf.json)",
    "rke2-canal-config": ("in RKE2, whose rke2-canal chart writes ConfigMap rke2-canal-config from the"
                          " cluster-cidr: set cluster-cidr: in /etc/rancher/rke2/config.yaml on every server"
                          " (or the HelmChartConfig rke2-canal valuesContent), so net-conf.json has"),
    "canal-config": "in canal.yaml (ConfigMap canal-config, net-conf.json)",
}


def _fix_network(ident: str, key: str, want: IPNetwork) -> str:
    """The fix for a Network that differs, where this ConfigMap is written."""
    home = _HOMES.get(ident.rpartition("/")[2], _HOMES["kube-flannel-cfg"])
    verb = "" if home.endswith("has") else " write"
    return f'{home}{verb} "{key}": "{want}".'


def _compare(key: str, have: IPNetwork, want: IPNetwork, view: ClusterView,
             settings: RuleSettings, source: str, ident: str = "") -> list[Finding]:
    if have == want:
        return []
    if settings.network_match is NetworkMatch.CONTAINS and have.supernet_of(want):  # type: ignore[arg-type]
        return [Finding(
            Severity.WARNING, "NetworkContainsClusterCIDR",
            f"flannel {key} {have} is wider than the cluster-cidr {want} {source}; accepted by"
            " --network-match contains.",
        )]
    relation = ("is inside" if have.subnet_of(want) else  # type: ignore[arg-type]
                "is wider than" if have.supernet_of(want) else "overlaps") if have.overlaps(want) \
        else "does not overlap"  # type: ignore[arg-type]
    if have.supernet_of(want):  # type: ignore[arg-type]
        # flannel only needs Network to contain each podCIDR (pkg/subnet/kube/kube.go): it starts.
        detail = (f"flannel starts (its Network contains every podCIDR of {want}), but its routes and"
                  f" masquerading then cover {have}, addresses outside the cluster's pod range;"
                  " --network-match contains accepts this on purpose.")
    else:
        detail = (f"Every node's podCIDR comes from {want}; flannel then fails with 'subnet \"{have}\""
                  " specified in the flannel net config doesn't contain ... PodCIDR' and pods cannot"
                  " reach each other across nodes.")
    return [Finding(
        Severity.ERROR, "NetworkMismatch",
        f"flannel {key} {have} does not match the cluster-cidr {want} {source};"
        f" it {relation} it.",
        detail,
        _fix_network(ident, key, want),
    )]


def _review_stranding(conf: NetConf, new: dict[str, Any] | None, old: dict[str, Any] | None,
                      view: ClusterView, operation: str, settings: RuleSettings) -> list[Finding]:
    """A new ``Network`` must still contain every existing node's podCIDR."""
    if operation == "UPDATE":
        old_text = _data(old).get(NET_CONF_KEY)
        if isinstance(old_text, str) and old_text == _data(new).get(NET_CONF_KEY):
            return []  # the same text: the same networks (and no second parse)
        old_conf = parse_net_conf(old_text).conf if isinstance(old_text, str) else None
        if old_conf is not None and (
            _net(old_conf.network), _net(old_conf.ipv6_network)
        ) == (_net(conf.network), _net(conf.ipv6_network)):
            return []
    networks = [p.network for p, on in ((conf.network, conf.enable_ipv4),
                                        (conf.ipv6_network, conf.enable_ipv6)) if p and on]
    if not networks:
        return []
    count, sample = view.nodes.outside(networks, limit=_MAX_NAMED)
    if not count:
        return []
    named = ", ".join(f"{n} ({c})" for n, c in sample)
    more = f" and {count - len(sample)} more" if count > len(sample) else ""
    # Nodes inside the cluster-cidr are valid again once Network is the cluster-cidr: none moves.
    fix = (f"write the cluster-cidr {view.describe_cidr()} as the Network: it contains every node's"
           " podCIDR, so no node has to move."
           if view.cluster_cidr and not view.nodes.outside(view.cluster_cidr, limit=0)[0] else
           "keep the Network that contains them, or drain, delete and re-register those nodes"
           " after changing the cluster-cidr.")
    return [Finding(
        Severity.ERROR, "StrandsNodes",
        f"this Network would strand {count} existing node podCIDR(s) outside"
        f" {', '.join(map(str, networks))}: {named}{more}.",
        "flannel on those nodes would fail with 'doesn't contain ... PodCIDR of the node'."
        " A node's podCIDR cannot change once set.",
        fix,
    )]


def _net(parsed: object) -> object:
    return getattr(parsed, "network", None)


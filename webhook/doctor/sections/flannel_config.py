"""The flannel ConfigMaps, judged by the webhook's own rule (``review_configmap``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from webhook.core.cidr import IPNetwork
from webhook.core.nodeargs import CONFIG_FILES, distribution_of
from webhook.core.rules.configmap import NET_CONF_KEY, review_configmap
from webhook.core.rules.findings import Severity
from webhook.core.rules.fixnetwork import replace_top_level_value
from webhook.core.rules.flannel import parse_net_conf
from webhook.doctor.model import Context, Section, flannel_networks, of_family
from webhook.doctor.report import ConfigMapRow, Fix

__all__ = ["NETWORK_CODES", "configmaps", "corrected_net_conf"]

#: The rule codes that a new Network / IPv6Network mends.
NETWORK_CODES = frozenset({"NetworkMismatch", "FamilyNotInFlannel", "FamilyNotInCluster", "MissingNetwork",
                           "HostBitsSet"})


def corrected_net_conf(text: str, target: Sequence[IPNetwork]) -> str | None:
    """``text`` with Network / IPv6Network (and the Enable flags) set to ``target``; None if not JSON."""
    v4, v6 = of_family(target, 4), of_family(target, 6)
    conf = parse_net_conf(text).conf
    simple = (conf is not None and conf.enable_ipv4 == (v4 is not None)
              and conf.enable_ipv6 == (v6 is not None))
    if simple:
        out: str | None = text
        for key, want in (("Network", v4), ("IPv6Network", v6)):
            if want is not None and out is not None:
                out = replace_top_level_value(out, key, str(want))
        if out is not None:
            return out
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    wanted: dict[str, Any] = {"Network": str(v4) if v4 else None, "EnableIPv4": v4 is not None,
                              "IPv6Network": str(v6) if v6 else None, "EnableIPv6": v6 is not None}
    for key in wanted:
        for k in [k for k in doc if k.casefold() == key.casefold()]:
            del doc[k]
    for key, value in wanted.items():
        if value is None or (key, value) in (("EnableIPv4", True), ("EnableIPv6", False)):
            continue
        doc[key] = value
    doc.setdefault("Backend", {"Type": "vxlan"})
    return json.dumps(doc, indent=2)


#: The DaemonSet that reads a flannel ConfigMap, when not kube-flannel.yml's kube-flannel-ds.
_DAEMONSETS = {"canal-config": "canal"}


def _nodes_inside(ctx: Context) -> bool:
    """Whether every node's podCIDR lies in the cluster-cidr (so a Network set to it strands none)."""
    return bool(ctx.target) and not ctx.view.nodes.outside(ctx.target, limit=0)[0]


def configmaps(ctx: Context) -> tuple[list[ConfigMapRow], Section]:
    out = Section()
    rows: list[ConfigMapRow] = []
    servers = [d for src in ctx.res.sources if (d := distribution_of(src))]
    if not ctx.facts.configmaps and servers and servers[0][0] == "k3s":
        out.notes.append("k3s embeds flannel: its net-conf.json is a file on each node"
                         " (<data-dir>/agent/etc/flannel/net-conf.json, data-dir /var/lib/rancher/k3s by"
                         " default), written from the server's cluster-cidr or --flannel-conf; the API does"
                         " not show it."
                         f" Its Network is the cluster-cidr ({ctx.target_text}) unless --flannel-conf says"
                         f" otherwise: change it with cluster-cidr: in {CONFIG_FILES['k3s']}")
    elif not ctx.facts.configmaps and servers:
        out.notes.append(f"RKE2 without a flannel ConfigMap (rke2-canal-config, kube-flannel-cfg): its CNI is"
                         f" not Canal or flannel (cni: in {CONFIG_FILES['rke2']}), nothing here for flannel")
    elif not ctx.facts.configmaps:
        refs = " and ".join(f"{ns}/{n}" for ns, n in ctx.facts.flannel_configmaps)
        out.add(Severity.WARNING, "NoFlannelConfigMap", "flannel", f"no flannel ConfigMap found ({refs}).",
                "flannel reads net-conf.json from it and does not start without it.",
                [Fix("manual", "kubectl apply -f kube-flannel.yml with net-conf.json \"Network\": \""
                     f"{ctx.target_text or '<the cluster-cidr>'}\"")])
    if len({flannel_networks(cm) for cm in ctx.facts.configmaps}) > 1:
        out.notes.append("the flannel ConfigMaps differ; flannel reads the one in the namespace of its"
                         " DaemonSet (kube-flannel since v0.20)")
    for cm in ctx.facts.configmaps:
        obj = {"metadata": {"namespace": cm.namespace, "name": cm.name},
               "data": {} if cm.net_conf is None else {NET_CONF_KEY: cm.net_conf}}
        found = [f for f in review_configmap("CREATE", obj, None, ctx.view, ctx.settings)
                 if f.code != "ClusterCIDRUnknown"]
        if any(f.code in NETWORK_CODES for f in found) and _nodes_inside(ctx):
            # The new Network fixes the nodes too: "strands" would only repeat the mismatch.
            found = [f for f in found if f.code != "StrandsNodes"]
        parsed = parse_net_conf(cm.net_conf).conf if cm.net_conf is not None else None
        fixed = False
        for f in found:
            fixes: list[Fix] = []
            # RKE2's chart writes rke2-canal-config from the cluster-cidr: an edit would be undone.
            if (f.code in NETWORK_CODES and not fixed and ctx.target and cm.net_conf is not None
                    and cm.name != "rke2-canal-config"):
                corrected = corrected_net_conf(cm.net_conf, ctx.target)
                if corrected is not None:
                    fixed = True
                    fixes.append(Fix(
                        "set-flannel-network",
                        f"kubectl -n {cm.namespace} edit configmap {cm.name}: set data.{NET_CONF_KEY} to\n"
                        f"{corrected}\nthen `kubectl -n {cm.namespace} rollout restart daemonset"
                        f" {_DAEMONSETS.get(cm.name, 'kube-flannel-ds')}`",
                        {"namespace": cm.namespace, "configMap": cm.name, "netConf": corrected}))
            if not fixes and f.fix:
                fixes.append(Fix("manual", f.fix))
            out.add(f.severity, f.code, f"flannel ConfigMap {cm.ref}", f.summary, f.detail, fixes)
        errs = {f.code for f in found if f.severity is Severity.ERROR}
        rows.append(ConfigMapRow(
            ref=cm.ref,
            network=str(parsed.network.network) if parsed and parsed.network and parsed.enable_ipv4 else "-",
            ipv6_network=(str(parsed.ipv6_network.network)
                          if parsed and parsed.ipv6_network and parsed.enable_ipv6 else "-"),
            backend=parsed.backend_type if parsed else "-",
            accepted=parsed is not None,
            matches=None if not ctx.target or parsed is None else not (errs & NETWORK_CODES),
        ))
    return rows, out

"""The flannel ConfigMap rule against the cluster-cidr and the node index."""

from __future__ import annotations

import json

import pytest
from conftest import flannel_configmap, make_view, net_conf

from webhook.core.rules import Mode, ReviewInput, RuleSettings, Severity, decide, review
from webhook.core.rules.configmap import CNI_CONF_MAX_BYTES, is_flannel_configmap, review_configmap
from webhook.core.rules.findings import NetworkMatch

SETTINGS = RuleSettings()


def run(obj, view, operation="CREATE", old=None, settings=SETTINGS):
    return review_configmap(operation, obj, old, view, settings)


def error_codes(findings):
    return [f.code for f in findings if f.severity is Severity.ERROR]


def test_the_seed_network_10_244_against_cluster_172_18_is_denied_naming_both():
    # seed README: kubeadm --pod-network-cidr 172.18.0.0/16, kube-flannel.yml left at 10.244.0.0/16.
    view = make_view("172.18.0.0/16", source="kube-controller-manager --cluster-cidr")
    findings = run(flannel_configmap(net_conf()), view)
    assert error_codes(findings) == ["NetworkMismatch"]
    text = findings[0].text()
    assert "10.244.0.0/16" in text and "172.18.0.0/16" in text
    assert "kube-controller-manager --cluster-cidr" in text  # which source it came from
    assert '"Network": "172.18.0.0/16"' in findings[0].fix


def test_typo_10_224_against_10_244_is_denied():
    # field report #1 (flannel#1983): a typo 10.224 vs 10.244.
    findings = run(flannel_configmap(net_conf(Network="10.224.0.0/16")), make_view("10.244.0.0/16"))
    assert error_codes(findings) == ["NetworkMismatch"]


def test_matching_network_is_admitted_without_findings():
    assert run(flannel_configmap(net_conf()), make_view("10.244.0.0/16")) == []


@pytest.mark.parametrize(("network", "match", "errors", "warning"), [
    ("10.0.0.0/8", NetworkMatch.EXACT, ["NetworkMismatch"], None),
    # pkg/subnet/kube/kube.go only needs Network to contain each podCIDR: --network-match contains.
    ("10.0.0.0/8", NetworkMatch.CONTAINS, [], "NetworkContainsClusterCIDR"),
    ("10.244.0.0/17", NetworkMatch.CONTAINS, ["NetworkMismatch"], None),
])
def test_network_match_modes(network, match, errors, warning):
    settings = RuleSettings(network_match=match)
    findings = run(flannel_configmap(net_conf(Network=network)), make_view("10.244.0.0/16"),
                   settings=settings)
    assert error_codes(findings) == errors
    if warning:
        assert [f.code for f in findings if f.severity is Severity.WARNING] == [warning]


DUAL = "10.244.0.0/16,fd00:10:244::/56"


@pytest.mark.parametrize(("cluster", "fields", "errors"), [
    # field report #8: IPv6Network exactly when the cluster-cidr has an IPv6 part.
    (DUAL, {"EnableIPv6": True, "IPv6Network": "fd00:10:244::/56"}, []),
    (DUAL, {}, ["FamilyNotInFlannel"]),
    (DUAL, {"EnableIPv6": True, "IPv6Network": "fd00:10:245::/56"}, ["NetworkMismatch"]),
    ("10.244.0.0/16", {"EnableIPv6": True, "IPv6Network": "fd00:10:244::/56"}, ["FamilyNotInCluster"]),
    # IPv6-only cluster: flannel must turn IPv4 off.
    ("fd00:10:244::/56", {"EnableIPv6": True, "IPv6Network": "fd00:10:244::/56"},
     ["FamilyNotInCluster"]),
    ("fd00:10:244::/56", {"Network": None, "EnableIPv4": False, "EnableIPv6": True,
                          "IPv6Network": "fd00:10:244::/56"}, []),
    # IPv6 listed first in the cluster-cidr (flannel#1629) is still matched by family.
    ("fd00:10:244::/56,10.244.0.0/16", {"EnableIPv6": True, "IPv6Network": "fd00:10:244::/56"}, []),
])
def test_dual_stack_family_by_family(cluster, fields, errors):
    findings = run(flannel_configmap(net_conf(**fields)), make_view(cluster))
    assert error_codes(findings) == errors


def test_unknown_cluster_cidr_is_a_configurable_outcome_never_silent():
    cm = flannel_configmap(net_conf())
    denied = run(cm, make_view(None))
    assert error_codes(denied) == ["ClusterCIDRUnknown"]
    warned = run(cm, make_view(None), settings=RuleSettings(unknown_cidr=Severity.WARNING))
    assert [f.code for f in warned] == ["ClusterCIDRUnknown"]
    assert warned[0].severity is Severity.WARNING


def test_missing_net_conf_key_is_denied():
    assert error_codes(run(flannel_configmap(None), make_view())) == ["MissingNetConf"]


@pytest.mark.parametrize(("cni", "code"), [
    ("{not json", "CNIConfNotJSON"),
    (json.dumps({"name": "cbr0", "plugins": [{"type": "bridge"}]}), "CNIConfNoFlannel"),
    (json.dumps([1, 2]), "CNIConfNotJSON"),
])
def test_cni_conf_must_be_json_with_a_flannel_plugin(cni, code):
    cm = flannel_configmap(net_conf(), **{"cni-conf.json": cni})
    assert error_codes(run(cm, make_view())) == [code]


def test_cni_conf_single_plugin_form_is_accepted():
    cm = flannel_configmap(net_conf(), **{"cni-conf.json": json.dumps({"type": "flannel"})})
    assert run(cm, make_view()) == []


def test_update_that_strands_nodes_is_refused_naming_five_and_the_count():
    nodes = {f"worker-{i:04d}": [f"10.244.{i}.0/24"] for i in range(1, 8)}
    view = make_view("10.244.0.0/16", nodes=nodes)
    old = flannel_configmap(net_conf())
    new = flannel_configmap(net_conf(Network="10.245.0.0/16"))
    settings = RuleSettings(network_match=NetworkMatch.EXACT)
    findings = run(new, view, operation="UPDATE", old=old, settings=settings)
    strand = next(f for f in findings if f.code == "StrandsNodes")
    assert "7 existing node podCIDR(s)" in strand.summary
    assert strand.summary.count("worker-") == 5
    assert "and 2 more" in strand.summary


def test_update_that_keeps_network_does_not_rescan_nodes():
    view = make_view("10.244.0.0/16", nodes={"stray": ["10.99.0.0/24"]})
    old = flannel_configmap(net_conf())
    new = flannel_configmap(net_conf(EnableNFTables=True))
    assert run(new, view, operation="UPDATE", old=old) == []


def test_delete_is_refused_unless_annotated():
    cm = flannel_configmap(net_conf())
    findings = review_configmap("DELETE", None, cm, make_view(), SETTINGS)
    assert error_codes(findings) == ["DeleteRefused"]
    assert "flannel-guard.io/allow-delete=true" in findings[0].fix
    cm["metadata"]["annotations"] = {"flannel-guard.io/allow-delete": "true"}
    findings = review_configmap("DELETE", None, cm, make_view(), SETTINGS)
    assert error_codes(findings) == []


@pytest.mark.parametrize(("namespace", "name", "guarded"), [
    ("kube-flannel", "kube-flannel-cfg", True),
    ("kube-system", "kube-flannel-cfg", True),   # v0.11 / v0.13 manifests, kubespray, RKE2 --cni=flannel
    ("kube-system", "rke2-canal-config", True),  # RKE2's default CNI
    ("kube-system", "canal-config", True),       # upstream Canal
    ("kube-flannel", "rke2-canal-config", False),
    ("default", "kube-flannel-cfg", False),
    ("kube-flannel", "other", False),
])
def test_only_the_flannel_configmaps_are_guarded(namespace, name, guarded):
    cm = flannel_configmap(net_conf(Network="1.2.3.0/24"), namespace=namespace, name=name)
    req = ReviewInput("ConfigMap", "CREATE", namespace, name, cm, None)
    assert bool(review(req, make_view(), SETTINGS)) is guarded


def test_warn_mode_admits_and_says_what_enforce_would_deny():
    findings = run(flannel_configmap(net_conf(Network="10.0.0.0/16")), make_view())
    enforce = decide(findings, Mode.ENFORCE)
    warn = decide(findings, Mode.WARN)
    assert not enforce.allowed and enforce.code == 403 and "10.0.0.0/16" in enforce.message
    assert warn.allowed and any("would deny" in w for w in warn.warnings)


def test_warnings_are_capped_as_the_api_server_does():
    from webhook.core.rules import WARNING_MAX, WARNINGS_TOTAL_MAX
    from webhook.core.rules.findings import Finding

    many = [Finding(Severity.WARNING, "W", "w" * 1000) for _ in range(100)]
    verdict = decide(many, Mode.ENFORCE)
    assert all(len(w) <= WARNING_MAX for w in verdict.warnings)
    assert sum(len(w) for w in verdict.warnings) <= WARNINGS_TOTAL_MAX


@pytest.mark.parametrize("field", ["name", "namespace"])
@pytest.mark.parametrize("value", [[], {}, 7, ["kube-flannel-cfg"]],
                         ids=["list", "object", "number", "a-list-of-it"])
def test_a_name_or_namespace_that_is_not_a_string_is_simply_not_guarded(field, value):
    """Issue 15: ``metadata.name: []`` raised TypeError (an internal error) in is_flannel_configmap."""
    cm = flannel_configmap(net_conf(Network="10.1.0.0/16"))
    cm["metadata"][field] = value
    req = ReviewInput(kind="ConfigMap", operation="CREATE", namespace="kube-flannel", name=None,
                      object=cm, old_object=None)
    assert review(req, make_view(), SETTINGS) == []
    assert is_flannel_configmap(cm, SETTINGS, "kube-flannel") is False


def test_a_cni_conf_past_its_cap_is_refused_unread():
    cni = json.dumps({"name": "cbr0", "plugins": [{"type": "flannel"}], "pad": "x" * CNI_CONF_MAX_BYTES})
    findings = run(flannel_configmap(net_conf(), **{"cni-conf.json": cni}), make_view())
    assert error_codes(findings) == ["CNIConfTooLarge"]
    assert f"{len(cni):,} bytes" in findings[0].summary


def test_messages_say_what_flannel_really_does_and_fixes_name_the_value():
    """A wider Network starts flannel (pkg/subnet/kube/kube.go only needs it to contain each
    podCIDR); a fix that asks for the cluster-cidr names it; a quoted boolean gets its fix."""
    view = make_view("10.244.0.0/16")
    wider = review_configmap("CREATE", flannel_configmap(net_conf(Network="10.0.0.0/8")), None, view,
                             RuleSettings())
    [mismatch] = [f for f in wider if f.code == "NetworkMismatch"]
    assert "is wider than it" in mismatch.summary
    assert "flannel starts" in mismatch.detail and "doesn't contain" not in mismatch.detail
    missing = review_configmap("CREATE", flannel_configmap('{"Backend": {"Type": "vxlan"}}'), None, view,
                               RuleSettings())
    [no_network] = [f for f in missing if f.code == "MissingNetwork"]
    assert '"Network": "10.244.0.0/16"' in no_network.fix
    quoted = review_configmap("CREATE", flannel_configmap(
        '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": "true"}}'), None, view,
        RuleSettings())
    [bad] = [f for f in quoted if f.code == "InvalidBackend"]
    assert bad.fix == 'write "DirectRouting": true (a JSON boolean, without quotes).'


@pytest.mark.parametrize(("name", "fix"), [
    ("kube-flannel-cfg", 'in kube-flannel.yml (ConfigMap kube-flannel-cfg, net-conf.json) write "Network":'
                         ' "10.244.0.0/16".'),
    ("rke2-canal-config", "set cluster-cidr: in /etc/rancher/rke2/config.yaml"),
    ("canal-config", 'in canal.yaml (ConfigMap canal-config, net-conf.json) write "Network":'
                     ' "10.244.0.0/16".'),
])
def test_a_canal_configmap_is_judged_as_kube_flannel_cfg_with_its_own_fix(name, fix):
    cm = flannel_configmap(net_conf(Network="10.42.0.0/16"), namespace="kube-system", name=name)
    findings = review_configmap("CREATE", cm, None, make_view(), SETTINGS)
    (mismatch,) = [f for f in findings if f.code == "NetworkMismatch"]
    assert "flannel Network 10.42.0.0/16 does not match the cluster-cidr 10.244.0.0/16" in mismatch.summary
    assert fix in mismatch.fix and '"Network": "10.244.0.0/16"' in mismatch.fix

"""The shipped ValidatingAdmissionPolicies (manifests/components/admission-policy), evaluated as
kube-apiserver evaluates them (tests/admission_policy.py) with the Kubernetes CEL ip/cidr
libraries restated for cel-python (tests/cel_k8s.py), under both behaviours of
``containsCIDR`` (fixed in Kubernetes 1.32.4 / 1.33, kubernetes/kubernetes#130450).

* the library restatement answers the upstream doc examples of cidr.go / ip.go;
* the policy's containment is right on every version, where ``containsCIDR`` is not;
* only writes that set podCIDRs are evaluated; a missing parameter ConfigMap allows
  (and why Deny would not be safe); a malformed one refuses podCIDR writes only;
* one verdict: the policy refuses exactly the writes the webhook's pure Node rule refuses
  for a stateless reason, and nothing the webhook admits;
* Leases in flannel-guard's namespace: only its ServiceAccount writes them.
"""

from __future__ import annotations

import copy
import ipaddress
import subprocess
from typing import Any

import celpy
import pytest
import yaml
from admission_policy import PolicySet, Verdict, evaluate, request_attrs
from cel_k8s import CIDR, IP, CelK8s
from conftest import make_view, node
from hypothesis import given, settings
from hypothesis import strategies as st
from test_helm import CHART, HELM
from test_manifests import need_tool
from test_rules_node import CASES, DUAL_NODES, NODES

from webhook.core.constants import LEASE_POLICY, NAMESPACE, NODE_POLICY, POLICY_PARAMS_CONFIGMAP, SERVICE
from webhook.core.policyparams import params_data
from webhook.core.rules import Severity
from webhook.core.rules.node import review_node

FIXED, BUGGY = CelK8s(), CelK8s(contains_cidr_fixed=False)
BOTH = pytest.mark.parametrize("cel", [FIXED, BUGGY], ids=["1.32.4+", "before-1.32.4"])
POLICIES = PolicySet.load()
SA = f"system:serviceaccount:{NAMESPACE}:{SERVICE}"


def value(cel: CelK8s, expression: str) -> Any:
    result = cel.evaluate(expression, {})
    return None if isinstance(result, celpy.CELEvalError) else result


# -- the library -------------------------------------------------------------------------------

# The examples of the doc comments of k8s.io/apiserver/pkg/cel/library/cidr.go and ip.go, as
# the code answers them (cidr('192.168.0.1/16') is accepted: parseCIDR refuses only an
# IPv4-mapped address; masked() exists for host bits).
LIBRARY = [
    ("cidr('192.168.0.0/24').containsIP(ip('192.168.0.1'))", True),
    ("cidr('192.168.0.0/24').containsIP(ip('192.168.1.1'))", False),
    ("cidr('192.168.0.0/24').containsIP('192.168.0.1')", True),
    ("cidr('192.168.1.0/24').containsCIDR(cidr('192.168.2.0/24'))", False),
    ("cidr('192.168.1.0/24').containsCIDR('192.168.2.0/24')", False),
    ("cidr('192.168.0.1/24').ip() == ip('192.168.0.1')", True),
    ("cidr('192.168.0.1/24').ip().family()", 4),
    ("cidr('::1/128').ip().family()", 6),
    ("cidr('192.168.0.1/24').masked() == cidr('192.168.0.0/24')", True),
    ("cidr('192.168.0.0/24') == cidr('192.168.0.0/24').masked()", True),
    ("cidr('192.168.0.1/24') == cidr('192.168.0.1/24').masked()", False),
    ("cidr('192.168.0.0/16').prefixLength()", 16),
    ("cidr('::1/128').prefixLength()", 128),
    ("isCIDR('192.168.0.0/16')", True),
    ("isCIDR('::1/128')", True),
    ("isCIDR('192.168.0.0/33')", False),
    ("isCIDR('::1/129')", False),
    ("isCIDR('192.168.0.1/16')", True),
    ("isCIDR('::ffff:10.244.3.0/120')", False),  # IPv4-mapped: refused by parseCIDR
    ("isCIDR('10.244.03.0/24')", False),          # netip: no leading zeros
    ("isCIDR('10.244.3.0/024')", False),          # netip: bad bits after slash
    ("isCIDR(' 10.244.3.0/24')", False),
    ("isCIDR('fe80::%eth0/64')", False),
    ("isIP('fe80::1%eth0')", False),               # a zone: refused by parseIPAddr
    ("isIP('::ffff:1.2.3.4')", False),
    ("isIP('10.0.0.1')", True),
    ("string(cidr('10.0.0.1/8'))", "10.0.0.1/8"),
    ("string(cidr('fd00:10:244:0::/64').masked())", "fd00:10:244::/64"),
    ("string(ip('10.0.0.1'))", "10.0.0.1"),
    ("ip('127.0.0.1').isLoopback()", True),
    ("ip('fe80::1').isLinkLocalUnicast()", True),
    ("ip('10.0.0.1').isGlobalUnicast()", True),
    ("ip('0.0.0.0').isUnspecified()", True),
    ("'a,b'.split(',')", ["a", "b"]),
    ("cidr('10.0.0.0/8').containsIP(ip('fd00::1'))", False),
]


@BOTH
@pytest.mark.parametrize(("expression", "expected"), LIBRARY, ids=[e for e, _ in LIBRARY])
def test_the_restated_library_answers_as_upstream(cel, expression, expected):
    assert value(cel, expression) == expected


@BOTH
def test_parse_errors_are_cel_errors(cel):
    for expression in ("cidr('10.0.0.0')", "ip('10.0.0.256')", "cidr('x').prefixLength()"):
        assert isinstance(cel.evaluate(expression, {}), celpy.CELEvalError), expression


# containsCIDR, before and after kubernetes/kubernetes#130450.
CONTAINS = [
    ("10.244.0.0/16", "10.244.3.0/24", True, False),   # the bug: a subnet not at the start
    ("192.168.0.0/16", "192.168.10.0/24", True, False),  # cidr.go's own doc example
    ("10.244.0.0/16", "10.244.0.0/24", True, True),
    ("10.244.0.0/16", "10.244.0.0/16", True, True),
    ("10.244.0.0/24", "10.244.0.0/16", False, False),
    ("10.244.0.0/16", "10.245.0.0/24", False, False),
    ("fd00:10:244::/56", "fd00:10:244:3::/64", True, False),
    ("10.0.0.0/8", "fd00::/64", False, False),
]


@pytest.mark.parametrize(("outer", "inner", "fixed", "buggy"), CONTAINS)
def test_contains_cidr_before_and_after_the_fix(outer, inner, fixed, buggy):
    expression = f"cidr('{outer}').containsCIDR(cidr('{inner}'))"
    assert (value(FIXED, expression), value(BUGGY, expression)) == (fixed, buggy)


POLICY_CONTAINS = ("cidr(k).containsIP(cidr(c).masked().ip())"
                   " && cidr(c).prefixLength() >= cidr(k).prefixLength()")

v4 = st.builds(lambda a, b: f"{ipaddress.IPv4Address(a)}/{b}", st.integers(0, 2**32 - 1), st.integers(0, 32))
v6 = st.builds(lambda a, b: f"{ipaddress.IPv6Address(a)}/{b}",  # IPv4-mapped: not a CIDR to the library
              st.integers(0, 2**128 - 1).filter(lambda a: ipaddress.IPv6Address(a).ipv4_mapped is None),
              st.integers(0, 128))
near = st.builds(lambda a, b: f"10.244.{a}.0/{b}", st.integers(0, 255), st.integers(8, 32))


@settings(max_examples=300, deadline=None)
@given(st.one_of(v4, v6, near), st.one_of(v4, v6, near))
def test_the_policys_containment_is_right_on_every_version(outer, inner):
    """The policy's expression is subnet_of on both library versions; the old containsCIDR
    only ever errs towards false (it required the subnet to start at the range's start)."""
    a, b = ipaddress.ip_network(outer, strict=False), ipaddress.ip_network(inner, strict=False)
    truth = a.version == b.version and b.subnet_of(a)
    activation = {"k": celpy.json_to_cel(outer), "c": celpy.json_to_cel(inner)}
    for cel in (FIXED, BUGGY):
        assert cel.evaluate(POLICY_CONTAINS, activation) == truth
    assert FIXED.evaluate("cidr(k).masked().containsCIDR(cidr(c))", activation) == truth
    if BUGGY.evaluate("cidr(k).containsCIDR(cidr(c))", activation):
        assert truth


def test_value_types_compare_as_netip_does():
    assert CIDR(ipaddress.ip_address("10.0.0.1"), 8) != CIDR(ipaddress.ip_address("10.0.0.0"), 8)
    assert IP(ipaddress.ip_address("::1")) == FIXED.ip("::1")


# -- the node policy ---------------------------------------------------------------------------

DUAL = "10.244.0.0/16,fd00:10:244::/56"


def params(cluster: str = DUAL, mask_v4: int = 24, mask_v6: int = 64, **data: str) -> dict:
    nets = [ipaddress.ip_network(c) for c in cluster.split(",")]
    body = params_data(nets, mask_v4, mask_v6, source="test", observed_at="2026-12-06T20:00:00Z")
    body.update(data)
    return {(NAMESPACE, POLICY_PARAMS_CONFIGMAP): {
        "apiVersion": "v1", "kind": "ConfigMap", "data": body,
        "metadata": {"name": POLICY_PARAMS_CONFIGMAP, "namespace": NAMESPACE}}}


def as_stored(obj: dict | None) -> dict | None:
    """The v1 object admission sees: pkg/apis/core/v1/conversion.go keeps podCIDR, podCIDRs[0] = it."""
    obj = copy.deepcopy(obj)
    spec = (obj or {}).get("spec") or {}
    if spec.get("podCIDR") and spec.get("podCIDRs") and spec["podCIDRs"][0] != spec["podCIDR"]:
        spec["podCIDRs"] = [spec["podCIDR"]]
    return obj


def node_verdict(operation: str, obj: dict | None, old: dict | None = None, *, cel: CelK8s = FIXED,
                 param: dict | None = None, policies: PolicySet = POLICIES,
                 user: str = "system:node:w") -> Verdict:
    req = request_attrs(operation, group="", version="v1", resource="nodes", kind="Node", name="w",
                        username=user)
    return evaluate(policies, NODE_POLICY, req, as_stored(obj), as_stored(old),
                    params=params() if param is None else param, cel=cel)


@BOTH
@pytest.mark.parametrize(("cidrs", "allowed"), [
    (("10.244.3.0/24", "fd00:10:244:3::/64"), True),
    (("10.244.3.0/24",), True),                              # single family of the first range
    (("fd00:10:244:3::/64", "10.244.3.0/24"), False),        # family order
    (("fd00:10:244:3::/64",), False),                        # IPv6 at index 0 of an IPv4-first cluster
    (("10.99.3.0/24", "fd00:10:244:3::/64"), False),         # outside
    (("10.244.3.0/24", "fd00:10:245:3::/64"), False),        # outside (IPv6)
    (("10.244.3.0/25",), False),                             # mask
    (("10.244.3.0/24", "fd00:10:244:3::/80"), False),        # mask (IPv6)
    (("10.244.3.0/24", "10.244.4.0/24"), False),             # two of a family
    (("10.244.3.1/24",), False),                             # host bits
    (("10.244.0.0/16",), False),                             # the whole range
])
def test_node_policy_table(cel, cidrs, allowed):
    verdict = node_verdict("CREATE", node("w", *cidrs), cel=cel)
    assert verdict.evaluated and verdict.allowed is allowed, verdict
    assert all("\n" not in m and m.startswith("node w: ") for m in verdict.messages)


def test_only_writes_that_set_podcidrs_are_evaluated():
    assert node_verdict("CREATE", node("w")) == Verdict(allowed=True)  # a kubelet registering
    labelled = node("w", "10.99.0.0/24")  # a pre-existing bad podCIDR: a label change is not judged
    labelled["metadata"]["labels"]["role"] = "edge"
    assert node_verdict("UPDATE", labelled, node("w", "10.99.0.0/24")) == Verdict(allowed=True)
    set_later = node_verdict("UPDATE", node("w", "10.99.0.0/24"), node("w"))  # none -> some
    assert set_later.evaluated and not set_later.allowed
    assert node_verdict("DELETE", None, node("w", "10.99.0.0/24")) == Verdict(allowed=True)


def test_a_missing_parameter_configmap_allows_and_deny_would_block_registration():
    """Allow: the API server collects params before matchConditions (validating/dispatcher.go)."""
    assert node_verdict("CREATE", node("w", "10.99.0.0/24"), param={}) == Verdict(allowed=True)
    assert node_verdict("CREATE", node("w"), param={}).allowed
    deny = PolicySet.load()
    deny.bindings_of(NODE_POLICY)[0]["spec"]["paramRef"]["parameterNotFoundAction"] = "Deny"
    registration = node_verdict("CREATE", node("w"), param={}, policies=deny)
    assert (registration.allowed, registration.reason) == (False, "config")


@pytest.mark.parametrize("data", [
    {"clusterCIDRs": "garbage"}, {"nodeCIDRMaskSizeIPv4": "twenty-four"}, {"clusterCIDRs": ""},
])
def test_a_malformed_parameter_configmap_refuses_podcidr_writes_only(data):
    bad = params(**data)
    verdict = node_verdict("CREATE", node("w", "10.244.3.0/24"), param=bad)
    assert not verdict.allowed and verdict.errors >= 1
    assert node_verdict("CREATE", node("w"), param=bad).allowed


def test_messages_name_the_cluster_cidr_and_masks():
    verdict = node_verdict("CREATE", node("w", "10.99.3.0/25"))
    assert verdict.messages == (
        f"node w: every podCIDR must lie inside the cluster-cidr of its family ({DUAL})",
        "node w: every podCIDR must be of the node mask size (IPv4 /24, IPv6 /64: --node-cidr-mask-size)",
    )


# -- one verdict with the webhook's pure Node rule ------------------------------------------------

# What the policy can see without state; OverlapsNode (another node's CIDR) and
# PodCIDRImmutable (the API server's own ValidateNodeUpdate) are the webhook's alone.
STATELESS = {"InvalidPodCIDR", "TooManyPodCIDRs", "DuplicateFamily", "FamilyNotInCluster",
             "OutsideClusterCIDR", "WrongSize", "FamilyOrder"}


def webhook_errors(obj: dict, cluster: str, mask_v4: int = 24, mask_v6: int = 64,
                   nodes: dict | None = None) -> set[str]:
    view = make_view(cluster, nodes=nodes, mask_v4=mask_v4, mask_v6=mask_v6)
    return {f.code for f in review_node("CREATE", obj, None, view) if f.severity is Severity.ERROR}


def same_verdict(obj: dict, cluster: str, mask_v4: int = 24, mask_v6: int = 64,
                 nodes: dict | None = None) -> tuple[bool, set[str]]:
    errors = webhook_errors(obj, cluster, mask_v4, mask_v6, nodes)
    for cel in (FIXED, BUGGY):
        verdict = node_verdict("CREATE", obj, cel=cel, param=params(cluster, mask_v4, mask_v6))
        assert verdict.allowed == (not errors & STATELESS), (obj["spec"], cluster, errors, verdict)
        if not verdict.allowed:
            assert errors, "the policy refuses only what the webhook refuses"
    return verdict.allowed, errors


@pytest.mark.parametrize(("obj", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_webhooks_node_vectors_get_one_verdict(obj, expected):
    allowed, errors = same_verdict(obj, "10.244.0.0/16", nodes=NODES)
    assert errors == set(expected)
    assert allowed is (not set(expected) - {"OverlapsNode"})


@pytest.mark.parametrize("cidrs", [
    ("10.244.2.0/24", "fd00:10:244:2::/64"), ("fd00:10:244:2::/64", "10.244.2.0/24"),
    ("10.244.2.0/24", "fd00:10:244:1::/64"), ("10.244.2.0/24", "fd00:10:245::/64"),
    ("10.244.2.0/24", "fd00:10:244:2::/80"), ("fd00:10:244:2::/64",),
])
def test_the_webhooks_dual_stack_vectors_get_one_verdict(cidrs):
    same_verdict(node("b", *cidrs), DUAL, nodes=DUAL_NODES)


POOL = ["10.244.3.0/24", "10.244.3.64/26", "10.244.3.5/24", "10.99.3.0/24", "10.244.0.0/16",
        "fd00:10:244:3::/64", "fd00:10:244:3:0:1::/96", "fd00:10:99::/64", "fd00:10:244:3::1/64",
        "not-a-cidr", "::ffff:10.244.3.0/120", "10.244.03.0/24", "0.0.0.0/0"]
CLUSTERS = ["10.244.0.0/16", DUAL, "fd00:10:244::/56,10.244.0.0/16", "fd00:10:244::/56"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(POOL), min_size=1, max_size=3), st.sampled_from(CLUSTERS),
       st.sampled_from([24, 26]), st.sampled_from([64, 96]))
def test_property_policy_and_webhook_agree_on_every_stateless_rule(cidrs, cluster, mask_v4, mask_v6):
    same_verdict(node("w", *cidrs), cluster, mask_v4, mask_v6)


# -- the Lease policy ----------------------------------------------------------------------------

def lease_verdict(operation: str, user: str, *, namespace: str = NAMESPACE,
                  terminating: bool = False) -> Verdict:
    req = request_attrs(operation, group="coordination.k8s.io", version="v1", resource="leases",
                        kind="Lease", name="podcidr-10-244-3-0-24", namespace=namespace, username=user)
    ns: dict = {"metadata": {"name": namespace, "labels": {"kubernetes.io/metadata.name": namespace}}}
    if terminating:
        ns["metadata"]["deletionTimestamp"] = "2026-12-06T20:00:00Z"
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "podcidr-10-244-3-0-24", "namespace": namespace}}
    obj, old = (None, lease) if operation == "DELETE" else (lease, None if operation == "CREATE" else lease)
    return evaluate(POLICIES, LEASE_POLICY, req, obj, old, namespace=ns)


@pytest.mark.parametrize("operation", ["CREATE", "UPDATE", "DELETE"])
def test_only_flannel_guards_service_account_writes_its_leases(operation):
    assert lease_verdict(operation, SA).allowed
    for planted_by in ("system:kube-controller-manager", "system:kube-scheduler", "kubernetes-admin",
                       "system:serviceaccount:kube-system:namespace-controller"):
        verdict = lease_verdict(operation, planted_by)
        assert not verdict.allowed and planted_by in verdict.messages[0]


def test_leases_elsewhere_and_the_namespace_being_deleted_are_left_alone():
    assert lease_verdict("CREATE", "system:node:w", namespace="kube-node-lease") == Verdict(allowed=True)
    controller = "system:serviceaccount:kube-system:namespace-controller"
    assert lease_verdict("DELETE", controller, terminating=True).allowed  # uninstall empties it
    assert not lease_verdict("CREATE", controller, terminating=True).allowed


def test_the_chart_renders_the_policies_for_its_release_namespace():
    """Installed elsewhere, the chart's policies name that namespace, and judge as the component does."""
    out = subprocess.run([str(need_tool(HELM)), "template", "fg", str(CHART), "--namespace", "guard",
                          "--set", "admissionPolicy.enabled=true", "--set", "certManager.enabled=true"],
                         capture_output=True, text=True, check=True).stdout
    chart = PolicySet.load([d for d in yaml.safe_load_all(out) if d and d["kind"].startswith("Validating")
                            and "Webhook" not in d["kind"]])
    assert sorted(chart.policies) == sorted(POLICIES.policies)
    ref = chart.bindings_of(NODE_POLICY)[0]["spec"]["paramRef"]
    assert (ref["name"], ref["namespace"]) == (POLICY_PARAMS_CONFIGMAP, "guard")
    moved = {("guard", POLICY_PARAMS_CONFIGMAP): next(iter(params().values()))}
    assert node_verdict("CREATE", node("w", "10.244.3.0/24"), param=moved, policies=chart).allowed
    assert not node_verdict("CREATE", node("w", "10.99.3.0/24"), param=moved, policies=chart).allowed
    req = request_attrs("CREATE", group="coordination.k8s.io", version="v1", resource="leases", kind="Lease",
                        name="x", namespace="guard", username="system:serviceaccount:guard:flannel-guard")
    ns = {"metadata": {"name": "guard", "labels": {"kubernetes.io/metadata.name": "guard"}}}
    assert evaluate(chart, LEASE_POLICY, req, {"metadata": {"name": "x"}}, None, namespace=ns).allowed
    req["userInfo"]["username"] = SA  # flannel-guard's account of the default namespace: not this one
    assert not evaluate(chart, LEASE_POLICY, req, {"metadata": {"name": "x"}}, None, namespace=ns).allowed

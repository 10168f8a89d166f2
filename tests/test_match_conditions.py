"""The webhooks' matchConditions, evaluated by a CEL interpreter on requests as kube-apiserver makes them.

kube-apiserver evaluates each ``matchConditions`` expression (CEL) with ``object``,
``oldObject`` (null on CREATE, ``object`` null on DELETE) and ``request``, and calls
the webhook only when all are true (Kubernetes ``staging/src/k8s.io/apiserver/pkg/
admission/plugin/webhook/matchconditions``). The expressions are read from manifests/
and run under cel-python by tests/admission_match.py (shared with bench/match_calls.py).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from admission_match import VALIDATE_NODES, VALIDATE_PODCIDRS, called, expressions

from webhook.core.constants import FLANNEL_CONFIGMAPS

Obj = dict[str, Any]

EXPRESSIONS = expressions()


def node(cidr: str | None = None, annotations: dict[str, str] | None = None, **spec: Any) -> Obj:
    metadata: Obj = {"name": "worker-1", "labels": {"kubernetes.io/hostname": "worker-1"}}
    if annotations is not None:
        metadata["annotations"] = annotations
    body: Obj = dict(spec)
    if cidr:
        body.update(podCIDR=cidr, podCIDRs=[cidr])
    return {"apiVersion": "v1", "kind": "Node", "metadata": metadata, "spec": body}


FLANNEL_IP = "flannel.alpha.coreos.com/public-ip"


def test_every_webhook_with_conditions_is_covered() -> None:
    assert {h for h, exprs in EXPRESSIONS.items() if exprs} == {
        VALIDATE_NODES, VALIDATE_PODCIDRS, "nodes.mutate.flannel-guard.io", "configmaps.flannel-guard.io",
        "configmaps.mutate.flannel-guard.io"}


# expected: which Node validating webhook kube-apiserver calls ("" none). A podCIDR write goes to
# the failurePolicy Fail webhook, everything else the rules judge to the Ignore one, never both.
@pytest.mark.parametrize(("case", "operation", "obj", "old", "expected"), [
    ("registration", "CREATE", node(), None, VALIDATE_NODES),
    ("registration with an empty podCIDR", "CREATE", node(podCIDR="", podCIDRs=[]), None, VALIDATE_NODES),
    ("registration with a podCIDR", "CREATE", node("10.244.1.0/24"), None, VALIDATE_PODCIDRS),
    ("registration with podCIDRs only", "CREATE", node(podCIDRs=["10.244.1.0/24"]), None, VALIDATE_PODCIDRS),
    ("registration with a podCIDR and a flannel annotation", "CREATE",
     node("10.244.1.0/24", {FLANNEL_IP: "192.0.2.1"}), None, VALIDATE_PODCIDRS),
    ("kube-controller-manager assigns", "UPDATE", node("10.244.1.0/24"), node(), VALIDATE_PODCIDRS),
    ("podCIDRs changed", "UPDATE", node("10.244.2.0/24"), node("10.244.1.0/24"), VALIDATE_PODCIDRS),
    ("podCIDR removed", "UPDATE", node(), node("10.244.1.0/24"), VALIDATE_PODCIDRS),
    ("dual-stack added", "UPDATE", node(podCIDR="10.244.1.0/24", podCIDRs=["10.244.1.0/24", "fd00::/64"]),
     node("10.244.1.0/24"), VALIDATE_PODCIDRS),
    ("podCIDR and a flannel annotation together", "UPDATE",
     node("10.244.1.0/24", {FLANNEL_IP: "192.0.2.1"}), node(), VALIDATE_PODCIDRS),
    ("a label", "UPDATE", node("10.244.1.0/24"), node("10.244.1.0/24"), ""),
    ("a taint", "UPDATE", node("10.244.1.0/24", taints=[{"key": "k", "effect": "NoSchedule"}]),
     node("10.244.1.0/24"), ""),
    ("flannel annotation added", "UPDATE", node("10.244.1.0/24", {FLANNEL_IP: "192.0.2.1"}),
     node("10.244.1.0/24"), VALIDATE_NODES),
    ("flannel annotation changed", "UPDATE", node("10.244.1.0/24", {FLANNEL_IP: "192.0.2.2"}),
     node("10.244.1.0/24", {FLANNEL_IP: "192.0.2.1"}), VALIDATE_NODES),
    ("flannel annotation removed", "UPDATE", node("10.244.1.0/24", {"other": "x"}),
     node("10.244.1.0/24", {FLANNEL_IP: "192.0.2.1", "other": "x"}), VALIDATE_NODES),
    ("flannel annotations unchanged, another changed", "UPDATE",
     node("10.244.1.0/24", {FLANNEL_IP: "192.0.2.1", "other": "y"}),
     node("10.244.1.0/24", {FLANNEL_IP: "192.0.2.1", "other": "x"}), ""),
    ("no podCIDR either side, no annotations", "UPDATE", node(), node(), ""),
])
def test_node_validation_is_called_only_when_what_it_judges_changes(
        case: str, operation: str, obj: Obj, old: Obj | None, expected: str) -> None:
    if case == "a label":
        obj = copy.deepcopy(obj)
        obj["metadata"]["labels"]["node-role.kubernetes.io/worker"] = ""
    hooks = [h for h in (VALIDATE_PODCIDRS, VALIDATE_NODES) if called(h, operation, obj, old)]
    assert hooks == ([expected] if expected else []), case


def test_node_mutation_is_called_only_for_nodes_without_a_podcidr() -> None:
    hook = "nodes.mutate.flannel-guard.io"
    assert called(hook, "CREATE", node(), None)
    assert called(hook, "CREATE", node(podCIDR=""), None)
    assert not called(hook, "CREATE", node("10.244.1.0/24"), None)
    assert called(hook, "UPDATE", node(), node())


def test_configmap_webhooks_see_only_kube_flannel_cfg_and_its_deletion() -> None:
    def cm(name: str) -> Obj:
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "kube-flannel"}}

    hook = "configmaps.flannel-guard.io"
    assert called(hook, "CREATE", cm("kube-flannel-cfg"), None)
    assert not called(hook, "UPDATE", cm("coredns"), cm("coredns"))
    assert called(hook, "DELETE", None, cm("kube-flannel-cfg"))  # DELETE: object is null
    assert not called(hook, "DELETE", None, cm("kube-proxy"))
    fix = "configmaps.mutate.flannel-guard.io"
    assert called(fix, "UPDATE", cm("kube-flannel-cfg"), cm("kube-flannel-cfg"))
    assert not called(fix, "CREATE", cm("other"), None)


@pytest.mark.parametrize("name", sorted({n for _, n in FLANNEL_CONFIGMAPS}))
def test_configmap_webhooks_see_every_guarded_flannel_configmap(name: str) -> None:
    """kube-flannel-cfg, RKE2 Canal's rke2-canal-config and Canal's canal-config: each is sent to
    both ConfigMap webhooks on every operation they judge (webhook/core/constants.py FLANNEL_CONFIGMAPS)."""
    def cm(n: str, ns: str = "kube-system") -> Obj:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n, "namespace": ns}}

    hook = "configmaps.flannel-guard.io"
    assert called(hook, "CREATE", cm(name), None)
    assert called(hook, "UPDATE", cm(name), cm(name))
    assert called(hook, "DELETE", None, cm(name))
    assert called("configmaps.mutate.flannel-guard.io", "UPDATE", cm(name), cm(name))
    # a name that merely contains one is not sent
    assert not called(hook, "CREATE", cm(f"{name}-backup"), None)
    assert not called(hook, "DELETE", None, cm(f"old-{name}"))

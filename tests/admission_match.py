"""Which requests kube-apiserver sends to flannel-guard's webhooks: rules, then matchConditions.

Read from the manifests as shipped (manifests/base/webhooks.yaml and the fix-network
component's ConfigMap webhook) and decided as kube-apiserver decides, in its order:

1. *Rules* (``staging/src/k8s.io/apiserver/pkg/admission/plugin/webhook/predicates/rules/
   rules.go``): the operation is listed, the group and version match, and the resource
   matches with its subresource: a rule on ``nodes`` has an empty subresource, so it does
   not match ``nodes/status`` (only ``nodes/status``, ``nodes/*`` or ``*/*`` would).
   A request no rule matches is never sent, with or without matchConditions.
2. *matchConditions* (``.../plugin/webhook/matchconditions/matcher.go``): CEL expressions over
   ``object`` (null on DELETE), ``oldObject`` (null on CREATE) and ``request``. Any condition
   false: not sent (even if another errored). Otherwise, any error: failurePolicy ``Fail``
   rejects the request without calling the webhook, ``Ignore`` skips the webhook. All true:
   sent.

The expressions run under cel-python, an implementation of the CEL specification
(kube-apiserver uses cel-go; the expressions use only the specification's core: ``has``,
``in``, ``exists``, ``startsWith``, list equality). Each expression is compiled once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import yaml

ROOT = Path(__file__).resolve().parent.parent
WEBHOOKS = ROOT / "manifests" / "base" / "webhooks.yaml"
FIX_NETWORK = ROOT / "manifests" / "components" / "fix-network" / "configmap-webhook.yaml"

VALIDATE_NODES = "nodes.flannel-guard.io"          # registration, flannel annotations (Ignore)
VALIDATE_PODCIDRS = "podcidrs.nodes.flannel-guard.io"  # writes that set or change a podCIDR (Fail)
VALIDATING_NODE_HOOKS = (VALIDATE_PODCIDRS, VALIDATE_NODES)
MUTATE_NODES = "nodes.mutate.flannel-guard.io"

Obj = dict[str, Any]


@dataclass(frozen=True)
class Webhook:
    """One webhook of a (Validating|Mutating)WebhookConfiguration, as the manifests declare it."""

    name: str
    mutating: bool
    rules: tuple[Obj, ...]
    failure_policy: str
    conditions: tuple[tuple[str, str], ...]  # (name, expression)


@dataclass(frozen=True)
class Match:
    """What kube-apiserver does with one request for one webhook."""

    rules: bool                  # a rule matches (the webhook is sent it without matchConditions)
    called: bool                 # the webhook is called (rules and every condition true)
    rejected: bool = False       # an expression error under failurePolicy Fail: the request is refused
    errors: int = 0              # expressions that did not evaluate to a bool
    failed_condition: str = ""   # the first condition that was false


def hook_of(doc: Obj, mutating: bool) -> Webhook:
    return Webhook(name=doc["name"], mutating=mutating, rules=tuple(doc.get("rules", [])),
                   failure_policy=doc.get("failurePolicy", "Fail"),
                   conditions=tuple((m["name"], m["expression"]) for m in doc.get("matchConditions", [])))


@cache
def webhooks() -> dict[str, Webhook]:
    """Every webhook the manifests can install, by name (base, plus the fix-network component)."""
    found: dict[str, Webhook] = {}
    for doc in yaml.safe_load_all(WEBHOOKS.read_text()):
        mutating = doc["kind"] == "MutatingWebhookConfiguration"
        for hook in doc["webhooks"]:
            found[hook["name"]] = hook_of(hook, mutating)
    (patch,) = yaml.safe_load(FIX_NETWORK.read_text())
    found[patch["value"]["name"]] = hook_of(patch["value"], mutating=True)
    return found


def expressions() -> dict[str, list[str]]:
    """Each webhook's matchConditions expressions, by webhook name."""
    return {name: [e for _, e in hook.conditions] for name, hook in webhooks().items()}


_ENV = celpy.Environment()


@cache
def _program(expression: str) -> celpy.Runner:
    return _ENV.program(_ENV.compile(expression))


def rules_match(hook: Webhook, operation: str, resource: str, subresource: str = "",
                group: str = "", version: str = "v1") -> bool:
    """Whether one of the webhook's rules matches (rules.go: operation, group, version, resource/sub)."""
    for rule in hook.rules:
        if not ({"*", operation} & set(rule.get("operations", []))):
            continue
        if not ({"*", group} & set(rule.get("apiGroups", []))):
            continue
        if not ({"*", version} & set(rule.get("apiVersions", []))):
            continue
        for item in rule.get("resources", []):
            res, _, sub = item.partition("/")
            if res in ("*", resource) and sub in ("*", subresource):
                return True
    return False


def request(operation: str, kind: str, resource: str, subresource: str, name: str,
            namespace: str = "", username: str = "") -> Obj:
    """The ``request`` variable: the AdmissionRequest's attributes (celplugin.CreateAdmissionRequest)."""
    req: Obj = {"operation": operation, "kind": {"group": "", "version": "v1", "kind": kind},
                "resource": {"group": "", "version": "v1", "resource": resource},
                "requestKind": {"group": "", "version": "v1", "kind": kind},
                "requestResource": {"group": "", "version": "v1", "resource": resource},
                "name": name, "dryRun": False, "userInfo": {"username": username}}
    if subresource:
        req["subResource"] = req["requestSubResource"] = subresource
    if namespace:
        req["namespace"] = namespace
    return req


def conditions(hook: Webhook, req: Obj, obj: Obj | None, old: Obj | None) -> Match:
    """matcher.go's verdict on a request the rules already matched."""
    activation = {"request": celpy.json_to_cel(req), "object": celpy.json_to_cel(obj),
                  "oldObject": celpy.json_to_cel(old)}
    errors = 0
    for name, expression in hook.conditions:
        try:
            result = _program(expression).evaluate(activation)
        except celpy.CELEvalError:
            errors += 1
            continue
        if not isinstance(result, celpy.celtypes.BoolType):
            errors += 1
        elif not result:
            return Match(rules=True, called=False, errors=errors, failed_condition=name)
    if errors:
        return Match(rules=True, called=False, rejected=hook.failure_policy == "Fail", errors=errors)
    return Match(rules=True, called=True)


def admit(hook: Webhook, operation: str, obj: Obj | None, old: Obj | None, *, kind: str, resource: str,
          subresource: str = "", username: str = "", use_conditions: bool = True) -> Match:
    """What kube-apiserver does with this request for ``hook``: rules first, then matchConditions."""
    if not rules_match(hook, operation, resource, subresource):
        return Match(rules=False, called=False)
    if not use_conditions:
        return Match(rules=True, called=True)
    meta = (obj if obj is not None else old or {}).get("metadata", {})
    req = request(operation, kind, resource, subresource, meta.get("name", ""),
                  meta.get("namespace", ""), username)
    return conditions(hook, req, obj, old)


def called(name: str, operation: str, obj: Obj | None, old: Obj | None) -> bool:
    """Whether kube-apiserver would call webhook ``name`` for this request; an expression error fails."""
    hook = webhooks()[name]
    kind = "Node" if any("nodes" in r["resources"] for r in hook.rules) else "ConfigMap"
    match = admit(hook, operation, obj, old, kind=kind, resource=f"{kind.lower()}s")
    assert match.errors == 0, f"{name}: {match}"
    return match.called


@dataclass(frozen=True)
class Outcome:
    """One Node write and one Node webhook: sent without matchConditions, and with them."""

    write: Any       # a node_writes.Write
    hook: str
    without: Match   # rules only (the manifests without matchConditions)
    with_: Match     # rules and matchConditions (the manifests as shipped)


def node_outcomes(writes: list[Any]) -> list[Outcome]:
    """Every write against every webhook with a rule on ``nodes``; mutating ones see the object as sent,
    validating ones the object after mutating admission (``Write.validated``)."""
    hooks = [h for h in webhooks().values() if any("nodes" in r["resources"] for r in h.rules)]
    out = []
    for w in writes:
        for hook in hooks:
            obj = w.object if hook.mutating else w.validated
            args = (hook, w.operation, obj, w.old_object)
            kw: Obj = {"kind": "Node", "resource": "nodes", "subresource": w.subresource}
            out.append(Outcome(w, hook.name, admit(*args, **kw, use_conditions=False), admit(*args, **kw)))
    return out


def tally(outcomes: list[Outcome]) -> Obj:
    """Calls per webhook and per kind of write, without and with matchConditions, and the errors."""
    hooks: Obj = {}
    for o in outcomes:
        h = hooks.setdefault(o.hook, {"without": 0, "with": 0, "errors": 0, "rejected": 0, "by_kind": {}})
        k = h["by_kind"].setdefault(o.write.kind, {"writes": 0, "without": 0, "with": 0})
        k["writes"] += 1
        for key, match in (("without", o.without), ("with", o.with_)):
            h[key] += match.called
            k[key] += match.called
        h["errors"] += o.with_.errors
        h["rejected"] += o.with_.rejected
    for h in hooks.values():
        h["reduction"] = round(1 - h["with"] / h["without"], 4) if h["without"] else 0.0
    return hooks

"""ValidatingAdmissionPolicies evaluated as kube-apiserver evaluates them, with cel-python.

Restated from kubernetes ``staging/src/k8s.io/apiserver/pkg/admission/plugin/policy/``
(``validating/dispatcher.go`` Dispatch, ``validating/validator.go`` Validate,
``generic/policy_dispatcher.go`` CollectParams, ``matching/matching.go``), for one request:

1. The policy's ``matchConstraints`` and then each binding's ``matchResources`` must match
   (resource rules: operation, group, version, resource; ``namespaceSelector`` by the
   namespace's labels, always matched by a cluster-scoped resource).
2. Parameters are collected *before* anything is evaluated (``CollectParams``): with
   ``paramKind`` and a ``paramRef`` by name, the object or nothing. Nothing and
   ``parameterNotFoundAction: Deny`` is a configuration error (refused under
   ``failurePolicy: Fail``); nothing and ``Allow`` evaluates nothing: admitted.
3. ``matchConditions`` (validator.go, the CEL matcher): any false, not evaluated further;
   else any error, ``failurePolicy`` decides (Fail refuses).
4. ``variables`` are computed lazily under ``variables.<name>``; each of ``validations``:
   an error refuses under Fail, false refuses with ``messageExpression`` (a string,
   trimmed, no newline) or ``message`` or the expression. ``validationActions: [Deny]``
   makes a refusal a denial.

The CEL variables are ``object``, ``oldObject`` (null on CREATE / DELETE), ``request``,
``params``, ``namespaceObject`` (null for a cluster-scoped resource) and ``variables``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import celpy
import yaml
from cel_k8s import CelK8s

ROOT = Path(__file__).resolve().parent.parent
COMPONENT = ROOT / "manifests" / "components" / "admission-policy"

Obj = dict[str, Any]


@dataclass(frozen=True)
class Verdict:
    """What kube-apiserver answers for one policy and its bindings."""

    allowed: bool
    evaluated: bool = False              # validations ran
    messages: tuple[str, ...] = ()       # the denial's message per refused validation
    errors: int = 0                      # expressions that errored
    reason: str = ""                     # "", "config" (params, failurePolicy), "condition-error"


@dataclass
class PolicySet:
    """The policies and bindings of some manifests, by name."""

    policies: dict[str, Obj] = field(default_factory=dict)
    bindings: list[Obj] = field(default_factory=list)

    @classmethod
    def load(cls, docs: list[Obj] | None = None) -> PolicySet:
        if docs is None:
            docs = [d for p in sorted(COMPONENT.glob("*.yaml")) if p.name != "kustomization.yaml"
                    for d in yaml.safe_load_all(p.read_text()) if d]
        out = cls()
        for doc in docs:
            if doc["kind"] == "ValidatingAdmissionPolicy":
                out.policies[doc["metadata"]["name"]] = doc
            elif doc["kind"] == "ValidatingAdmissionPolicyBinding":
                out.bindings.append(doc)
        return out

    def bindings_of(self, policy: str) -> list[Obj]:
        return [b for b in self.bindings if b["spec"]["policyName"] == policy]


def rule_matches(rules: list[Obj], operation: str, group: str, version: str, resource: str) -> bool:
    for rule in rules:
        if ({"*", operation} & set(rule.get("operations", []))
                and {"*", group} & set(rule.get("apiGroups", []))
                and {"*", version} & set(rule.get("apiVersions", []))
                and {"*", resource} & set(rule.get("resources", []))):
            return True
    return False


def selector_matches(selector: Obj | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels; matchExpressions In/NotIn/Exists/DoesNotExist)."""
    if not selector:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def resources_match(match: Obj | None, req: Obj, namespace: Obj | None) -> bool:
    if match is None:
        return True
    res = req["resource"]
    if "resourceRules" in match and not rule_matches(match["resourceRules"], req["operation"],
                                                      res["group"], res["version"], res["resource"]):
        return False
    if namespace is not None:  # a cluster-scoped resource always matches the namespaceSelector
        labels = (namespace.get("metadata") or {}).get("labels") or {}
        if not selector_matches(match.get("namespaceSelector"), labels):
            return False
    return True


class _LazyVariables(Mapping[str, Any]):
    """``variables``: each computed on first use, an error kept as the value (as cel-go's lazy eval)."""

    def __init__(self, cel: CelK8s, defs: list[Obj], activation: dict[str, Any]) -> None:
        self._cel, self._defs, self._activation = cel, {d["name"]: d["expression"] for d in defs}, activation
        self._values: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            self._values[key] = self._cel.evaluate(self._defs[key], self._activation)
        return self._values[key]

    def __iter__(self) -> Any:
        return iter(self._defs)

    def __len__(self) -> int:
        return len(self._defs)


class _Variables(celpy.celtypes.MapType):
    def __init__(self, lazy: _LazyVariables) -> None:
        super().__init__()
        self._lazy = lazy

    def __getitem__(self, key: Any) -> Any:
        return self._lazy[str(key)]

    def __contains__(self, key: object) -> bool:
        return str(key) in self._lazy


def request_attrs(operation: str, *, group: str, version: str, resource: str, kind: str, name: str,
                  namespace: str = "", username: str = "system:node:w") -> Obj:
    gvk = {"group": group, "version": version, "kind": kind}
    gvr = {"group": group, "version": version, "resource": resource}
    return {"operation": operation, "kind": gvk, "resource": gvr, "requestKind": gvk,
            "requestResource": gvr, "name": name, "namespace": namespace, "dryRun": False,
            "userInfo": {"username": username}}


def evaluate(policies: PolicySet, policy_name: str, req: Obj, obj: Obj | None, old: Obj | None, *,
             params: Mapping[tuple[str, str], Obj] | None = None, namespace: Obj | None = None,
             cel: CelK8s | None = None) -> Verdict:
    """The answer of one policy (every binding of it) to one request, as kube-apiserver gives it."""
    cel = cel or CelK8s()
    policy = policies.policies[policy_name]
    spec = policy["spec"]
    fail = spec.get("failurePolicy", "Fail") == "Fail"
    if not resources_match(spec.get("matchConstraints"), req, namespace):
        return Verdict(allowed=True)
    verdicts = []
    for binding in policies.bindings_of(policy_name):
        bspec = binding["spec"]
        if not resources_match(bspec.get("matchResources"), req, namespace):
            continue
        param: Obj | None = None
        ref = bspec.get("paramRef")
        if spec.get("paramKind") and ref:
            param = (params or {}).get((ref.get("namespace", req.get("namespace", "")), ref["name"]))
            if param is None:
                if ref.get("parameterNotFoundAction") == "Deny":
                    verdicts.append(Verdict(allowed=not fail, errors=1, reason="config", messages=(
                        "no params found for policy binding with `Deny` parameterNotFoundAction",)))
                continue  # Allow: nothing to validate with
        verdicts.append(_validate(cel, spec, bspec, req, obj, old, param, namespace, fail))
    denied = [v for v in verdicts if not v.allowed]
    if denied:
        return denied[0]
    return Verdict(allowed=True, evaluated=any(v.evaluated for v in verdicts))


def _validate(cel: CelK8s, spec: Obj, bspec: Obj, req: Obj, obj: Obj | None, old: Obj | None,
              param: Obj | None, namespace: Obj | None, fail: bool) -> Verdict:
    activation: dict[str, Any] = {
        "object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(old),
        "request": celpy.json_to_cel(req), "params": celpy.json_to_cel(param),
        "namespaceObject": celpy.json_to_cel(namespace),
    }
    errors = 0
    for cond in spec.get("matchConditions", []):
        result = cel.evaluate(cond["expression"], activation)
        if isinstance(result, celpy.celtypes.BoolType):
            if not result:
                return Verdict(allowed=True)
        else:
            errors += 1
    if errors:
        return Verdict(allowed=not fail, errors=errors, reason="condition-error")
    activation["variables"] = _Variables(_LazyVariables(cel, spec.get("variables", []), activation))
    messages = []
    for validation in spec.get("validations", []):
        result = cel.evaluate(validation["expression"], activation)
        if not isinstance(result, celpy.celtypes.BoolType):
            errors += 1
            if fail:
                messages.append(f"expression error: {validation['expression'][:60]}")
            continue
        if not result:
            messages.append(_message(cel, validation, activation))
    deny = "Deny" in bspec.get("validationActions", [])
    return Verdict(allowed=not (messages and deny), evaluated=True, messages=tuple(messages), errors=errors)


def _message(cel: CelK8s, validation: Obj, activation: dict[str, Any]) -> str:
    if "messageExpression" in validation:
        text = cel.evaluate(validation["messageExpression"], activation)
        if isinstance(text, str) and text.strip() and "\n" not in text:
            return str(text).strip()
    return (validation.get("message") or "").strip() or f"failed expression: {validation['expression']}"

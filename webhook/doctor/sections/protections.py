"""Which of flannel-guard's protections are installed and in force, and what each does while it is down.

Three layers hold the promise (README "When flannel-guard is down"):

* the webhooks, each with its ``failurePolicy``: ``Fail`` refuses what it matches while no replica
  answers (the flannel ConfigMap, and Node writes that set or change a podCIDR), ``Ignore`` lets
  it through unchecked (registration, flannel's annotations, the mutating webhook);
* the opt-in ValidatingAdmissionPolicies (``components/admission-policy``), enforced by the API
  server itself with no webhook in the loop: the stateless Node podCIDR rules, and Lease writes in
  flannel-guard's namespace by its own ServiceAccount only;
* the policy's parameter ConfigMap, which the elected replica keeps current from discovery; the
  binding allows everything without it (``parameterNotFoundAction: Allow``), so a missing or stale
  one is a policy that checks nothing, or checks the wrong range.

Pure: reads :class:`~webhook.doctor.facts.GuardFacts`; the rows go to the report, the gaps to
findings.
"""

from __future__ import annotations

from webhook.core.constants import LEASE_POLICY, NODE_POLICY, POLICY_PARAMS_CONFIGMAP, SERVICE
from webhook.core.policyparams import params_agree
from webhook.core.rules.findings import Severity
from webhook.doctor.facts import GuardFacts, PolicyFacts, WebhookFacts
from webhook.doctor.model import Context, Section
from webhook.doctor.report import Fix, ProtectionRow

__all__ = ["PODCIDR_WEBHOOK", "protections"]

#: The Node webhook that fails closed (manifests/base/webhooks.yaml).
PODCIDR_WEBHOOK = "podcidrs.nodes.flannel-guard.io"
_COMPONENT = "manifests/components/admission-policy (Helm: --set admissionPolicy.enabled=true)"
_WHILE_DOWN = {
    "Fail": "while no replica answers: the writes it matches are refused",
    "Ignore": "while no replica answers: the writes it matches go through unchecked",
}
_POLICY_DOES = {
    NODE_POLICY: "the API server refuses a podCIDR outside the cluster-cidr, of the wrong size or"
                 " family order, with no webhook in the loop",
    LEASE_POLICY: "only flannel-guard's ServiceAccount writes Leases (podCIDR claims) in its namespace",
}


def _webhook_row(kind: str, w: WebhookFacts) -> ProtectionRow:
    return ProtectionRow(kind, w.name, f"failurePolicy {w.failure_policy}",
                         _WHILE_DOWN.get(w.failure_policy, "failurePolicy " + w.failure_policy))


def _policy_row(p: PolicyFacts) -> ProtectionRow:
    if not p.policy:
        return ProtectionRow("admission policy", p.name, "not installed", f"opt-in: {_COMPONENT}")
    if not p.binding:
        return ProtectionRow("admission policy", p.name, "INACTIVE",
                             "the policy has no binding: it checks nothing")
    if "Deny" not in p.actions:
        return ProtectionRow("admission policy", p.name, "audit only",
                             f"binding validationActions {','.join(p.actions) or '-'}: nothing is refused")
    return ProtectionRow("admission policy", p.name, "active", _POLICY_DOES.get(p.name, ""))


def _params_row(ctx: Context, g: GuardFacts, node_policy: PolicyFacts | None,
                out: Section) -> ProtectionRow | None:
    active = node_policy is not None and node_policy.policy and node_policy.binding
    ref = f"ConfigMap {g.namespace}/{POLICY_PARAMS_CONFIGMAP}"
    if g.policy_params is None:
        if not active:
            return None
        out.add(Severity.WARNING, "GuardPolicyParamsMissing", "flannel-guard",
                f"{ref} does not exist: the admission policy {NODE_POLICY} allows every Node write"
                " (parameterNotFoundAction Allow).",
                "The elected flannel-guard replica writes it once it knows the cluster-cidr; without a"
                " replica leading, or without a cluster-cidr, there is none.",
                [Fix("manual", f"kubectl -n {g.namespace} get pods -l app.kubernetes.io/name={SERVICE};"
                     f" kubectl -n {g.namespace} logs deploy/{SERVICE} | grep policy")])
        return ProtectionRow("policy parameters", ref, "MISSING", "the node policy checks nothing")
    data = g.policy_params
    said = data.get("clusterCIDRs") or "-"
    if ctx.target and params_agree(data, ctx.target, ctx.res.mask_v4, ctx.res.mask_v6):
        return ProtectionRow("policy parameters", ref, "current",
                             f"clusterCIDRs {said}, masks /{data.get('nodeCIDRMaskSizeIPv4', '-')}"
                             f" /{data.get('nodeCIDRMaskSizeIPv6', '-')},"
                             f" written {data.get('observedAt', '-')}")
    if not ctx.target:
        return ProtectionRow("policy parameters", ref, "unchecked",
                             f"clusterCIDRs {said}: doctor found no cluster-cidr to compare with")
    wanted = ",".join(str(n) for n in ctx.target)
    if active:
        out.add(Severity.WARNING, "GuardPolicyParamsStale", "flannel-guard",
                f"{ref} gives the admission policy clusterCIDRs {said} (masks"
                f" /{data.get('nodeCIDRMaskSizeIPv4', '-')}, /{data.get('nodeCIDRMaskSizeIPv6', '-')}),"
                f" but the cluster-cidr is {wanted} (masks /{ctx.res.mask_v4}, /{ctx.res.mask_v6}).",
                "The API server judges Node podCIDR writes against the stale range: valid writes may be"
                " refused and invalid ones admitted. The elected replica rewrites it within seconds of"
                " a change; a stale one means no replica leads, or it cannot write the ConfigMap.",
                [Fix("manual", f"kubectl -n {g.namespace} logs deploy/{SERVICE} | grep -i policy; check"
                     f" RBAC: get/update configmap {POLICY_PARAMS_CONFIGMAP} in {g.namespace}")])
    return ProtectionRow("policy parameters", ref, "STALE", f"clusterCIDRs {said}, cluster-cidr {wanted}")


def protections(ctx: Context) -> tuple[tuple[ProtectionRow, ...], Section]:
    """One row per protection; findings for a podCIDR webhook that fails open and for parameters
    the active policy cannot use."""
    out = Section()
    g = ctx.facts.guard
    if g is None or not g.installed:
        return (), out
    rows = [*(_webhook_row("validating webhook", w) for w in g.validating or ()),
            *(_webhook_row("mutating webhook", w) for w in g.mutating or ())]
    validating = {w.name: w for w in g.validating or ()}
    if g.validating is not None and validating.get(PODCIDR_WEBHOOK) is None:
        nodes = [w.name for w in g.validating if w.name.startswith("nodes.")]
        out.add(Severity.WARNING, "GuardPodCIDRWritesFailOpen", "flannel-guard",
                f"No Node webhook fails closed: while no flannel-guard replica answers, a podCIDR that"
                f" another node holds can be stored ({', '.join(nodes) or 'no Node webhook'} is"
                " failurePolicy Ignore).",
                f"Installs since the split have {PODCIDR_WEBHOOK} with failurePolicy Fail for the writes that"
                " set or change a podCIDR; registration stays Ignore.",
                [Fix("manual", "kubectl apply -k manifests/ (or helm upgrade) from a current flannel-guard")])
    elif PODCIDR_WEBHOOK in validating and validating[PODCIDR_WEBHOOK].failure_policy != "Fail":
        out.add(Severity.WARNING, "GuardPodCIDRWritesFailOpen", "flannel-guard",
                f"Webhook {PODCIDR_WEBHOOK} is failurePolicy {validating[PODCIDR_WEBHOOK].failure_policy}:"
                " while no replica answers, a duplicate podCIDR can be stored.", "",
                [Fix("manual", f"kubectl edit validatingwebhookconfiguration {SERVICE}: set"
                     f" failurePolicy: Fail on {PODCIDR_WEBHOOK}")])
    by_name = {p.name: p for p in g.policies}
    rows += [_policy_row(by_name.get(name) or PolicyFacts(name)) for name in (NODE_POLICY, LEASE_POLICY)]
    params = _params_row(ctx, g, by_name.get(NODE_POLICY), out)
    if params is not None:
        rows.append(params)
    return tuple(rows), out

"""flannel-guard itself: its webhook configurations, Service endpoints, serving certificate, allocator mode.

A webhook whose Service has no ready endpoint, with ``failurePolicy: Fail``, refuses
every write it matches ("failed calling webhook"); a caBundle that does not verify the
serving certificate makes kube-apiserver fail the TLS handshake ("x509: certificate
signed by unknown authority"). Both are checked here from what the API holds.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from webhook.core.constants import SERVICE, TLS_SECRET
from webhook.core.rules.findings import Severity
from webhook.doctor.facts import GuardFacts, WebhookFacts
from webhook.doctor.model import Context, Section
from webhook.doctor.report import Fix, GuardRow

__all__ = ["EXPIRY_WARNING_DAYS", "allocator_mode", "guard"]

EXPIRY_WARNING_DAYS = 30
_INSTALL = "kubectl apply -k manifests/ (from the flannel-guard repository)"


def allocator_mode(g: GuardFacts) -> str:
    """``serve --allocate on|off`` as the Deployment runs it (flag, else FLANNEL_GUARD_ALLOCATE, else on)."""
    args = list(g.args)
    for i, a in enumerate(args):
        if a.startswith("--allocate="):
            return a.split("=", 1)[1]
        if a == "--allocate" and i + 1 < len(args):
            return args[i + 1]
    return g.env.get("FLANNEL_GUARD_ALLOCATE", "on") or "on"


def _load_certs(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        return []


def _verifies(ca_bundle: bytes, leaf: x509.Certificate) -> bool:
    for ca in _load_certs(ca_bundle):
        try:
            leaf.verify_directly_issued_by(ca)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def _webhooks(g: GuardFacts) -> list[WebhookFacts]:
    return [*(g.validating or ()), *(g.mutating or ())]


def _certificate(out: Section, g: GuardFacts, now: datetime) -> tuple[str | None, bool | None]:
    if g.serving_cert is None:
        out.notes.append(f"flannel-guard's serving certificate (Secret {g.namespace}/{TLS_SECRET}) could"
                         " not be read: its expiry and caBundle were not checked")
        return None, None
    leaf = next(iter(_load_certs(g.serving_cert)), None)
    if leaf is None:
        out.add(Severity.ERROR, "GuardCertUnreadable", "flannel-guard",
                f"Secret {g.namespace}/{TLS_SECRET} tls.crt is not a PEM certificate.",
                fixes=[Fix("manual", "flannel-guard certs --out certs, then recreate the Secret"
                           f" {TLS_SECRET}")])
        return None, None
    not_after = leaf.not_valid_after_utc
    left = (not_after - now).total_seconds() / 86400
    when = not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    renew = Fix("manual", f"flannel-guard certs --service {SERVICE} --namespace {g.namespace} --out certs;"
                f" kubectl -n {g.namespace} create secret tls {TLS_SECRET} --cert certs/tls.crt --key"
                " certs/tls.key --dry-run=client -o yaml | kubectl apply -f -; put certs/ca.crt (base64)"
                " in both webhook configurations' caBundle; or let cert-manager renew it"
                " (overlays/cert-manager)")
    if left < 0:
        out.add(Severity.ERROR, "GuardCertExpired", "flannel-guard",
                f"flannel-guard's serving certificate expired on {when}: kube-apiserver cannot call the"
                " webhook.",
                "Every write the webhooks match fails with 'failed calling webhook ... x509: certificate has"
                " expired' while failurePolicy is Fail.", [renew])
    elif left < EXPIRY_WARNING_DAYS:
        out.add(Severity.WARNING, "GuardCertExpiring", "flannel-guard",
                f"flannel-guard's serving certificate expires on {when}, in {int(left)} day(s).", "", [renew])
    service_name = f"{SERVICE}.{g.namespace}.svc"
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if service_name not in names:
        out.add(Severity.ERROR, "GuardCertWrongName", "flannel-guard",
                f"flannel-guard's serving certificate does not name {service_name} (it names"
                f" {', '.join(names) or 'nothing'}).",
                "kube-apiserver checks the Service's DNS name: 'x509: certificate is valid for ...,"
                " not ...'.",
                [renew])
    verified: bool | None = None
    for w in _webhooks(g):
        if not w.ca_bundle:
            verified = False
            out.add(Severity.ERROR, "GuardCABundleMismatch", f"webhook {w.name}",
                    f"webhook {w.name} has no caBundle: kube-apiserver does not trust flannel-guard's"
                    " self-signed certificate.", "", [renew])
        elif not _verifies(w.ca_bundle, leaf):
            verified = False
            out.add(Severity.ERROR, "GuardCABundleMismatch", f"webhook {w.name}",
                    f"webhook {w.name}'s caBundle does not verify flannel-guard's serving certificate.",
                    "kube-apiserver fails the TLS handshake: 'x509: certificate signed by unknown authority'"
                    " (the Secret was renewed without the caBundle, or the other way round).", [renew])
        elif verified is None:
            verified = True
    return when, verified


def guard(ctx: Context, now: datetime | None = None) -> tuple[GuardRow | None, Section]:
    out = Section()
    g = ctx.facts.guard
    if g is None:
        return None, out
    if not g.installed:
        out.notes.append(f"flannel-guard is not installed (no Deployment {g.namespace}/{SERVICE}, no webhook"
                         " configurations): nothing guards flannel's ConfigMap and the Nodes' podCIDRs")
        return None, out
    out.notes += [f"flannel-guard: {what}" for what in g.unreadable]
    mode = allocator_mode(g)
    if g.validating is None:
        out.add(Severity.WARNING, "GuardWebhookMissing", "flannel-guard",
                f"ValidatingWebhookConfiguration {SERVICE} is not registered: flannel ConfigMap and Node"
                " writes are not checked.", "", [Fix("manual", _INSTALL)])
    if g.mutating is None and mode == "on":
        out.add(Severity.WARNING, "GuardWebhookMissing", "flannel-guard",
                f"MutatingWebhookConfiguration {SERVICE} is not registered but the allocator is on: Nodes"
                " without a podCIDR are not given one.", "", [Fix("manual", _INSTALL)])
    hooks = _webhooks(g)
    fail = [w.name for w in hooks if w.failure_policy == "Fail"]
    if hooks and (not g.service_found or g.ready_endpoints == 0):
        what = (f"the Service {g.namespace}/{SERVICE} does not exist" if not g.service_found else
                f"the Service {g.namespace}/{SERVICE} has no ready endpoint"
                + (f" ({g.not_ready_endpoints} not ready)" if g.not_ready_endpoints else ""))
        impact = (f"With failurePolicy Fail ({', '.join(fail)}) every write they match is refused:"
                  " 'failed calling webhook ... no endpoints available for service'." if fail else
                  "failurePolicy Ignore: writes go through unchecked.")
        if "podcidrs.nodes.flannel-guard.io" in fail:
            impact += (" kube-controller-manager's podCIDR writes are refused and retried (events"
                       " CIDRAssignmentFailed on the Nodes); kubelet registration goes through, without a"
                       " podCIDR, and flannel-guard's loop gives one once a replica is back.")
        out.add(Severity.ERROR if fail else Severity.WARNING, "GuardNoEndpoints", "flannel-guard",
                f"{what}: kube-apiserver cannot call flannel-guard.", impact,
                [Fix("manual", f"kubectl -n {g.namespace} get pods -l app.kubernetes.io/name={SERVICE}"
                     f" -o wide; kubectl -n {g.namespace} describe deployment {SERVICE}; to unblock at once:"
                     " kubectl"
                     f" delete validatingwebhookconfiguration,mutatingwebhookconfiguration {SERVICE}")])
    when, verified = _certificate(out, g, now or datetime.now(UTC))
    row = GuardRow(namespace=g.namespace, validating=g.validating is not None,
                   mutating=g.mutating is not None, ready_endpoints=g.ready_endpoints,
                   cert_not_after=when, cert_verified=verified, allocator=mode)
    return row, out


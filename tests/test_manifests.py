"""manifests/, Dockerfile: rendered with the real kustomize, validated, tied to the code.

Every install variant is rendered with ``tools/bin/kubectl kustomize`` (kubectl
1.33, kustomize v5) from a temporary copy of ``manifests/`` whose certificates
come from ``python -m webhook certs`` (no key is ever written into the
repository), and each object is validated against the Kubernetes 1.33 OpenAPI
schemas with ``kubernetes-validate`` (strict: unknown fields are errors).
The tools come from ``make tools`` (tools.mk).
"""

from __future__ import annotations

import ast
import base64
import datetime as dt
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import DNSName, PolicyBuilder, Store, VerificationError

from webhook.core.constants import (
    FLANNEL_CONFIGMAPS,
    NAMESPACE,
    POLICY_PARAMS_CONFIGMAP,
    PORT_IN_CLUSTER,
    ROUTE_HEALTHZ,
    ROUTE_METRICS,
    ROUTE_MUTATE,
    ROUTE_READYZ,
    ROUTE_VALIDATE,
    SERVICE,
    TLS_SECRET,
)
from webhook.service import certs
from webhook.service.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
KUBECTL = ROOT / "tools" / "bin" / "kubectl"
HADOLINT = ROOT / "tools" / "bin" / "hadolint"
K8S_VERSION = "1.33.0"
SVC_DNS = f"{SERVICE}.{NAMESPACE}.svc"  # the name kube-apiserver dials
CERT_MANAGER_KINDS = {"Certificate", "Issuer"}  # CRDs: no upstream schema
PROMETHEUS_KINDS = {"PodMonitor", "PrometheusRule"}  # the Prometheus Operator's CRDs
CRD_KINDS = CERT_MANAGER_KINDS | PROMETHEUS_KINDS
PROBE_PORT_IN_CLUSTER = 9644  # --probe-port: plain-HTTP /healthz, /readyz, /metrics
EXPECTED_ARGS = [
    "serve",
    "--in-cluster",
    "--port",
    str(PORT_IN_CLUSTER),
    "--tls-cert",
    "/etc/flannel-guard/tls/tls.crt",
    "--tls-key",
    "/etc/flannel-guard/tls/tls.key",
    "--shutdown-delay",
    "5",
    "--probe-port",
    str(PROBE_PORT_IN_CLUSTER),
]

Obj = dict[str, Any]


def need_tool(path: Path) -> Path:
    if not (path.is_file() and path.stat().st_mode & 0o111):
        pytest.fail(f"{path.relative_to(ROOT)} is missing: run `make tools` first", pytrace=False)
    return path


# --- rendering --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of manifests/ with certificates made by the real `certs` command."""
    need_tool(KUBECTL)
    root = tmp_path_factory.mktemp("tree") / "manifests"
    # Never copy a developer's local keys, only what git tracks in certs/.
    shutil.copytree(
        MANIFESTS,
        root,
        ignore=lambda d, names: (
            [n for n in names if n not in {"README.md", "kustomization.yaml"}]
            if Path(d).name == "certs"
            else []
        ),
    )
    command = [sys.executable, "-m", "webhook", "certs", "--service", SERVICE]
    command += ["--namespace", NAMESPACE, "--out", str(root / "certs")]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    # Composing cert-manager with the fix-network component, as the README shows.
    combo = root / "overlays" / "cert-manager-fix-network"
    combo.mkdir()
    (combo / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../cert-manager]\ncomponents: [../../components/fix-network]\n"
    )
    # Each opt-in component on the default install, as manifests/README.md shows.
    for component in ("client-ca", "single-replica", "prometheus"):
        overlay = root / "overlays" / f"with-{component}"
        overlay.mkdir()
        (overlay / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            "resources: [../../base, ../../certs]\n"
            f"components: [../../components/{component}, ../../components/ca-bundle-from-secret]\n"
        )
    return root


def kustomize(directory: Path) -> list[Obj]:
    result = subprocess.run(
        [str(need_tool(KUBECTL)), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


VARIANTS = {
    "default": ".",
    "fix-network": "overlays/fix-network",
    "cert-manager": "overlays/cert-manager",
    "cert-manager+fix-network": "overlays/cert-manager-fix-network",
    "client-ca": "overlays/with-client-ca",
    "single-replica": "overlays/with-single-replica",
    "prometheus": "overlays/with-prometheus",
}


@pytest.fixture(scope="module")
def rendered(tree: Path) -> dict[str, list[Obj]]:
    return {name: kustomize(tree / path) for name, path in VARIANTS.items()}


def one(objs: list[Obj], kind: str, name: str, namespace: str | None = None) -> Obj:
    found = [
        o
        for o in objs
        if o["kind"] == kind and o["metadata"]["name"] == name and o["metadata"].get("namespace") == namespace
    ]
    assert len(found) == 1, f"expected one {kind} {namespace}/{name}, found {len(found)}"
    return found[0]


def webhooks(objs: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for o in objs:
        if o["kind"] in {"ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}:
            for hook in o["webhooks"]:
                yield o["kind"], hook


def container(objs: list[Obj]) -> Obj:
    deployment = one(objs, "Deployment", SERVICE, NAMESPACE)
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


# --- schema validation -------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(
    rendered: dict[str, list[Obj]], variant: str
) -> None:
    objs = rendered[variant]
    crds = {o["kind"] for o in objs if o["apiVersion"].split("/")[0] in
            {"cert-manager.io", "monitoring.coreos.com"}}
    assert crds <= CRD_KINDS
    errors = []
    for o in objs:
        if o["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{o['kind']}/{o['metadata']['name']}: {e.message} at {list(e.path)}")
    assert not errors, "\n".join(errors)


def test_the_schema_check_catches_a_misspelt_field(rendered: dict[str, list[Obj]]) -> None:
    """A control: validation is not vacuous."""
    vwc = one(rendered["default"], "ValidatingWebhookConfiguration", SERVICE)
    hook = dict(vwc["webhooks"][0], failurPolicy="Fail")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dict(vwc, webhooks=[hook]), K8S_VERSION, strict=True)


def test_variants_have_the_expected_objects(rendered: dict[str, list[Obj]]) -> None:
    def kinds(variant: str) -> set[str]:
        return {o["kind"] for o in rendered[variant]}

    common = {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    }
    assert kinds("default") == kinds("fix-network") == common | {"Secret"}
    assert kinds("client-ca") == kinds("single-replica") == common | {"Secret"}
    # components/prometheus: also the Grafana dashboard, a ConfigMap for Grafana's sidecar.
    assert kinds("prometheus") == common | {"Secret", "ConfigMap"} | PROMETHEUS_KINDS
    assert kinds("cert-manager") == kinds("cert-manager+fix-network") == common | CERT_MANAGER_KINDS


# --- certificates and caBundle ----------------------------------------------------------


@pytest.mark.parametrize("variant", ["default", "fix-network", "client-ca", "prometheus"])
def test_secret_and_every_ca_bundle_come_from_the_generated_files(
    rendered: dict[str, list[Obj]], tree: Path, variant: str
) -> None:
    objs = rendered[variant]
    secret = one(objs, "Secret", TLS_SECRET, NAMESPACE)
    assert secret["type"] == "kubernetes.io/tls"
    files = {name: (tree / "certs" / name).read_bytes() for name in ("tls.crt", "tls.key", "ca.crt")}
    assert {k: base64.b64decode(v) for k, v in secret["data"].items()} == files
    expected = base64.b64encode(files["ca.crt"]).decode()
    bundles = [hook["clientConfig"].get("caBundle") for _, hook in webhooks(objs)]
    assert len(bundles) == (5 if variant == "fix-network" else 4)
    # kustomize folds long base64 lines; Go's base64 decoder skips the newlines.
    assert [re.sub(r"\s", "", b or "") for b in bundles] == [expected] * len(bundles)


@pytest.mark.parametrize("variant", ["cert-manager", "cert-manager+fix-network"])
def test_cert_manager_injects_the_ca_into_both_configurations(
    rendered: dict[str, list[Obj]], variant: str
) -> None:
    objs = rendered[variant]
    assert not [o for o in objs if o["kind"] == "Secret"]
    certificate = one(objs, "Certificate", TLS_SECRET, NAMESPACE)
    assert certificate["spec"]["secretName"] == TLS_SECRET
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        annotations = one(objs, kind, SERVICE)["metadata"]["annotations"]
        assert annotations["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{TLS_SECRET}"
    assert all("caBundle" not in hook["clientConfig"] for _, hook in webhooks(objs))
    # The chain: self-signed Issuer -> CA Certificate -> CA Issuer -> serving Certificate.
    ca_issuer = one(objs, "Issuer", certificate["spec"]["issuerRef"]["name"], NAMESPACE)
    ca_certificate = [o for o in objs if o["kind"] == "Certificate"
                      and o["spec"]["secretName"] == ca_issuer["spec"]["ca"]["secretName"]]
    (ca_certificate,) = ca_certificate
    assert ca_certificate["spec"]["isCA"] is True
    assert ca_certificate["spec"]["privateKey"]["rotationPolicy"] == "Never"
    root = one(objs, "Issuer", ca_certificate["spec"]["issuerRef"]["name"], NAMESPACE)
    assert "selfSigned" in root["spec"]
    assert not certificate["spec"].get("isCA")


def test_certificate_sans_cover_the_name_the_api_server_dials(
    rendered: dict[str, list[Obj]], tree: Path
) -> None:
    assert SVC_DNS in certs.dns_names(SERVICE, NAMESPACE)
    cert = x509.load_pem_x509_certificate((tree / "certs" / "tls.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == certs.dns_names(SERVICE, NAMESPACE)
    certificate = one(rendered["cert-manager"], "Certificate", TLS_SECRET, NAMESPACE)
    assert certificate["spec"]["dnsNames"] == certs.dns_names(SERVICE, NAMESPACE)
    assert certificate["spec"]["commonName"] == SVC_DNS


def _issue(spec: Obj, key: Any, issuer: tuple[x509.Certificate, Any] | None, now: dt.datetime,
           *, serial_shift: int = 0) -> x509.Certificate:
    """A certificate as cert-manager would make it from a Certificate's spec (key, CN, SANs, isCA)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec["commonName"])])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=_hours(spec["duration"])))
        .add_extension(x509.BasicConstraints(ca=bool(spec.get("isCA")), path_length=None), critical=True)
    )
    if spec.get("isCA"):
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in spec["dnsNames"]]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[0].public_key()), critical=False)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                    critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _hours(duration: str) -> int:
    assert duration.endswith("h"), duration
    return int(duration[:-1])


def _key(spec: Obj) -> Any:
    private = spec["privateKey"]
    assert (private["algorithm"], private["size"]) == ("ECDSA", 256)
    return ec.generate_private_key(ec.SECP256R1())


def _verifies(leaf: x509.Certificate, ca_bundle: list[x509.Certificate], now: dt.datetime) -> bool:
    """What kube-apiserver does with caBundle: verify the serving chain for the Service's name."""
    verifier = (PolicyBuilder().store(Store(ca_bundle)).time(now)
                .build_server_verifier(DNSName(SVC_DNS)))
    try:
        verifier.verify(leaf, [])
    except VerificationError:
        return False
    return True


def test_cert_manager_renewals_keep_the_injected_ca_bundle_valid(rendered: dict[str, list[Obj]]) -> None:
    """cainjector copies ca.crt of the serving Secret (the CA) into caBundle; the kubelet then
    takes a minute or two to update the mounted Secret. Through every renewal the certificate
    the pod serves must verify against the caBundle the API server holds, whichever is newer."""
    objs = rendered["cert-manager"]
    serving = one(objs, "Certificate", TLS_SECRET, NAMESPACE)["spec"]
    ca_issuer = one(objs, "Issuer", serving["issuerRef"]["name"], NAMESPACE)["spec"]["ca"]
    (ca_spec,) = [o["spec"] for o in objs if o["kind"] == "Certificate"
                  and o["spec"]["secretName"] == ca_issuer["secretName"]]
    now = dt.datetime.now(dt.UTC)
    ca_key = _key(ca_spec)
    ca = _issue(ca_spec, ca_key, None, now)  # signed by the self-signed Issuer: itself
    first = _issue(serving, _key(serving), (ca, ca_key), now)
    injected = [ca]  # caBundle after the first issue
    assert _verifies(first, injected, now)

    # A serving renewal (rotationPolicy Always: a new key), at renewBefore.
    assert serving["privateKey"]["rotationPolicy"] == "Always"
    later = now + dt.timedelta(hours=_hours(serving["duration"]) - _hours(serving["renewBefore"]))
    renewed = _issue(serving, _key(serving), (ca, ca_key), later)
    assert renewed.public_key() != first.public_key()
    assert _verifies(renewed, injected, later)  # caBundle unchanged: nothing to wait for
    assert _verifies(first, injected, later)  # the pod still serving the old pair: fine too

    # A CA renewal keeps its key (rotationPolicy Never): old and new CA certificates verify
    # the same serving certificates, so a caBundle lagging behind either way still works.
    assert ca_spec["privateKey"]["rotationPolicy"] == "Never"
    ca_later = now + dt.timedelta(hours=_hours(ca_spec["duration"]) - _hours(ca_spec["renewBefore"]))
    ca_renewed = _issue(ca_spec, ca_key, None, ca_later)
    after = _issue(serving, _key(serving), (ca_renewed, ca_key), ca_later)
    assert _verifies(after, [ca], ca_later) and _verifies(after, [ca_renewed], ca_later)
    served_before = _issue(serving, _key(serving), (ca, ca_key), ca_later)
    assert _verifies(served_before, [ca_renewed], ca_later)

    # The control: a serving certificate that is its own CA (the old overlay). Its renewal,
    # with a new key, is signed by nothing the old caBundle holds: TLS fails until cainjector
    # and the kubelet both caught up. The chain's renewal is signed by the injected CA.
    self_signed = {**serving, "isCA": True}
    old = _issue(self_signed, _key(serving), None, now)
    new = _issue(self_signed, _key(serving), None, later)
    with pytest.raises(InvalidSignature):
        new.verify_directly_issued_by(old)
    renewed.verify_directly_issued_by(ca)


# --- the manifests agree with the code ----------------------------------------------------


def app_routes() -> set[tuple[str, str]]:
    from webhook.control.settings import Settings
    from webhook.control.state import ClusterState
    from webhook.service.app import create_app

    app = create_app(Settings(), ClusterState(cluster_cidr=None, cidr_source="test"))
    return {(method, route.path) for route in app.routes for method in getattr(route, "methods", None) or ()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_webhooks_call_the_service_on_routes_the_app_serves(
    rendered: dict[str, list[Obj]], variant: str
) -> None:
    objs = rendered[variant]
    routes = app_routes()
    service = one(objs, "Service", SERVICE, NAMESPACE)
    (port,) = service["spec"]["ports"]
    for _, hook in webhooks(objs):
        ref = hook["clientConfig"]["service"]
        assert (ref["name"], ref["namespace"], ref["port"]) == (SERVICE, NAMESPACE, port["port"])
        assert ref["path"] in {ROUTE_VALIDATE, ROUTE_MUTATE}
        assert ("POST", ref["path"]) in routes
        assert "url" not in hook["clientConfig"]


def test_service_port_reaches_the_container_port(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["default"]
    service = one(objs, "Service", SERVICE, NAMESPACE)
    deployment = one(objs, "Deployment", SERVICE, NAMESPACE)
    (port,) = service["spec"]["ports"]
    assert port["port"] == 443
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    webhook_port, probe_port = container(objs)["ports"]
    assert webhook_port == {"name": port["targetPort"], "containerPort": PORT_IN_CLUSTER,
                            "protocol": "TCP"}  # fmt: skip
    assert probe_port == {"name": "metrics", "containerPort": PROBE_PORT_IN_CLUSTER, "protocol": "TCP"}
    args = container(objs)["args"]
    assert args[args.index("--port") + 1] == str(PORT_IN_CLUSTER)
    assert args[args.index("--probe-port") + 1] == str(PROBE_PORT_IN_CLUSTER)


def test_container_args_are_the_contract_and_parse(rendered: dict[str, list[Obj]]) -> None:
    from webhook.cli import _parser

    args = container(rendered["default"])["args"]
    assert args == EXPECTED_ARGS
    parsed = _parser().parse_args(args)
    assert (parsed.in_cluster, parsed.port) == (True, PORT_IN_CLUSTER)
    assert parsed.probe_port == PROBE_PORT_IN_CLUSTER


def test_fix_network_only_adds_the_flag(rendered: dict[str, list[Obj]]) -> None:
    from webhook.cli import _parser

    for variant in ("fix-network", "cert-manager+fix-network"):
        assert container(rendered[variant])["args"] == [*EXPECTED_ARGS, "--fix-network"]
    try:
        _parser().parse_args([*EXPECTED_ARGS, "--fix-network"])
    except SystemExit:
        pytest.xfail("`serve` has no --fix-network flag yet (the mutating ConfigMap issue)")


def test_tls_secret_is_mounted_where_the_args_point(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["default"]
    spec = one(objs, "Deployment", SERVICE, NAMESPACE)["spec"]["template"]["spec"]
    c = container(objs)
    (volume,) = [v for v in spec["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == TLS_SECRET
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    assert "subPath" not in mount  # a subPath mount never sees a rotated Secret
    for flag in ("--tls-cert", "--tls-key"):
        assert Path(c["args"][c["args"].index(flag) + 1]).parent == Path(mount["mountPath"])


def probe_routes() -> set[tuple[str, str]]:
    from webhook.control.state import ClusterState
    from webhook.service.probes import probe_app

    app = probe_app(ClusterState(cluster_cidr=None, cidr_source="test"), Metrics())
    return {(method, route.path) for route in app.routes for method in getattr(route, "methods", None) or ()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_and_metrics_use_the_plain_http_probe_port(
    rendered: dict[str, list[Obj]], variant: str
) -> None:
    """Never the webhook port: with --client-ca (components/client-ca) it refuses the kubelet."""
    objs = rendered[variant]
    c = container(objs)
    routes = probe_routes()
    assert routes == {("GET", ROUTE_HEALTHZ), ("GET", ROUTE_READYZ), ("GET", ROUTE_METRICS)}
    for probe, path in (("livenessProbe", ROUTE_HEALTHZ), ("readinessProbe", ROUTE_READYZ)):
        get = c[probe]["httpGet"]
        assert (get["scheme"], get["path"], get["port"]) == ("HTTP", path, "metrics")
    annotations = one(objs, "Deployment", SERVICE, NAMESPACE)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == ROUTE_METRICS
    assert annotations["prometheus.io/port"] == str(PROBE_PORT_IN_CLUSTER)
    assert annotations["prometheus.io/scheme"] == "http"


def test_client_ca_component_mounts_the_ca_where_the_flag_points(rendered: dict[str, list[Obj]]) -> None:
    from webhook.cli import _parser

    objs = rendered["client-ca"]
    c = container(objs)
    assert c["args"] == [*EXPECTED_ARGS, "--client-ca", "/etc/flannel-guard/client-ca/ca.crt"]
    assert _parser().parse_args(c["args"]).client_ca == Path("/etc/flannel-guard/client-ca/ca.crt")
    spec = one(objs, "Deployment", SERVICE, NAMESPACE)["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "client-ca"]
    assert volume["configMap"]["name"] == "flannel-guard-client-ca"
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "client-ca"]
    assert (mount["mountPath"], mount["readOnly"]) == ("/etc/flannel-guard/client-ca", True)


def test_single_replica_component_changes_only_the_replica_count(rendered: dict[str, list[Obj]]) -> None:
    single = one(rendered["single-replica"], "Deployment", SERVICE, NAMESPACE)
    default = one(rendered["default"], "Deployment", SERVICE, NAMESPACE)
    assert single["spec"]["replicas"] == 1
    assert {**single, "spec": {**single["spec"], "replicas": 2}} == default
    # The PodDisruptionBudget never refuses every eviction, whatever the replica count.
    pdb = one(rendered["single-replica"], "PodDisruptionBudget", SERVICE, NAMESPACE)
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": default["spec"]["selector"]}


def test_pod_is_hardened_and_runs_before_pod_networking(rendered: dict[str, list[Obj]]) -> None:
    deployment = one(rendered["default"], "Deployment", SERVICE, NAMESPACE)
    spec = deployment["spec"]["template"]["spec"]
    c = container(rendered["default"])
    assert deployment["spec"]["replicas"] == 2
    assert (spec["hostNetwork"], spec["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["serviceAccountName"] == SERVICE
    tolerated = {t["key"] for t in spec["tolerations"]}
    assert {"node-role.kubernetes.io/control-plane", "node.kubernetes.io/not-ready",
            "node.kubernetes.io/network-unavailable", "CriticalAddonsOnly"} <= tolerated
    # Preferred, never required: a required term leaves a second replica Pending for good
    # on a one-node cluster, and `kubectl rollout status` waits on it.
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in spec["affinity"]["podAntiAffinity"]
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [term["podAffinityTerm"]["topologyKey"] for term in anti] == ["kubernetes.io/hostname"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert set(c["resources"]["requests"]) == {"cpu", "memory"} and c["resources"]["limits"]
    # 95 MB resident at start, ~120 MB with 15,000 nodes (bench/RESULTS.md): request that.
    assert c["resources"]["requests"]["memory"] == "128Mi"
    assert c["resources"]["limits"]["memory"] == "256Mi"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}
    assert env["POD_NAMESPACE"] == "metadata.namespace"
    assert env["POD_NAME"] == "metadata.name"
    assert env["FLANNEL_GUARD_HOST"] == "status.podIP"  # not 127.0.0.1, not every interface
    pdb = one(rendered["default"], "PodDisruptionBudget", SERVICE, NAMESPACE)
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


# --- webhook policies ---------------------------------------------------------------------

#: name -> (failurePolicy, sideEffects, operations, resource)
EXPECTED_HOOKS = {
    "configmaps.flannel-guard.io": ("Fail", "None", ["CREATE", "UPDATE", "DELETE"], "configmaps"),
    "podcidrs.nodes.flannel-guard.io": ("Fail", "NoneOnDryRun", ["CREATE", "UPDATE"], "nodes"),
    "nodes.flannel-guard.io": ("Ignore", "None", ["CREATE", "UPDATE"], "nodes"),
    "nodes.mutate.flannel-guard.io": ("Ignore", "NoneOnDryRun", ["CREATE", "UPDATE"], "nodes"),
    "configmaps.mutate.flannel-guard.io": ("Ignore", "None", ["CREATE", "UPDATE"], "configmaps"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_webhook_policies_fail_safe(rendered: dict[str, list[Obj]], variant: str) -> None:
    names = set()
    for kind, hook in webhooks(rendered[variant]):
        name = hook["name"]
        names.add(name)
        failure, side_effects, operations, resource = EXPECTED_HOOKS[name]
        assert (hook["failurePolicy"], hook["sideEffects"]) == (failure, side_effects), name
        assert hook["admissionReviewVersions"] == ["v1"]
        assert 1 <= hook["timeoutSeconds"] <= 5
        (rule,) = hook["rules"]
        assert (rule["operations"], rule["resources"], rule["apiGroups"]) == (
            operations,
            [resource],
            [""],
        )
        assert (kind == "MutatingWebhookConfiguration") == (".mutate." in name)
        if kind == "MutatingWebhookConfiguration":
            assert hook["reinvocationPolicy"] == "Never"
        if resource == "nodes":
            # Fail closed only for writes that set or change a podCIDR: kubelet's registration
            # (no podCIDR) must never meet it (tests/test_match_conditions.py decides which writes).
            if failure == "Fail":
                assert name == "podcidrs.nodes.flannel-guard.io"
                (cond,) = hook["matchConditions"]
                assert cond["name"] == "sets-or-changes-pod-cidrs"
        else:
            # Only the flannel ConfigMaps, never the webhook's own namespace.
            (expr,) = hook["namespaceSelector"]["matchExpressions"]
            assert expr["key"] == "kubernetes.io/metadata.name" and expr["operator"] == "In"
            assert NAMESPACE not in expr["values"]
            assert set(expr["values"]) == {"kube-flannel", "kube-system"}
            expression = hook["matchConditions"][0]["expression"]
            assert all(f"'{name}'" in expression for _, name in FLANNEL_CONFIGMAPS), expression
    expected = set(EXPECTED_HOOKS) - {"configmaps.mutate.flannel-guard.io"}
    if "fix-network" in variant:
        expected = set(EXPECTED_HOOKS)
    assert names == expected


# --- RBAC ------------------------------------------------------------------------------

# A rule as a comparable tuple: (namespace or "*", apiGroup, resource, verb, resourceNames).
Grant = tuple[str, str, str, str, tuple[str, ...]]
CM_NAMES = ("kube-proxy", "kubeadm-config")
EXPECTED_GRANTS: set[Grant] = {
    *{("*", "", "nodes", v, ()) for v in ("list", "watch", "patch")},
    *{("*", "", "configmaps", v, tuple(sorted({n for _, n in FLANNEL_CONFIGMAPS})))
      for v in ("get", "list", "watch")},
    *{("kube-system", "", "configmaps", v, CM_NAMES) for v in ("get", "list", "watch")},
    *{("kube-system", "", "pods", v, ()) for v in ("list", "watch")},
    *{("default", "", "events", v, ()) for v in ("create", "patch")},
    *{(NAMESPACE, "coordination.k8s.io", "leases", v, ())
      for v in ("get", "list", "watch", "create", "update", "delete")},
    # The admission policy's parameter ConfigMap (webhook/kube/policyparams.py): by name,
    # but create, which RBAC cannot limit to a name.
    *{(NAMESPACE, "", "configmaps", v, (POLICY_PARAMS_CONFIGMAP,)) for v in ("get", "update")},
    (NAMESPACE, "", "configmaps", "create", ()),
}


def grants(objs: list[Obj]) -> set[Grant]:
    """Every permission bound to flannel-guard's ServiceAccount."""
    subject = {"kind": "ServiceAccount", "name": SERVICE, "namespace": NAMESPACE}
    out: set[Grant] = set()
    for binding in objs:
        if binding["kind"] not in {"RoleBinding", "ClusterRoleBinding"}:
            continue
        assert binding["subjects"] == [subject]
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace")
        role = one(objs, ref["kind"], ref["name"], None if ref["kind"] == "ClusterRole" else namespace)
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        names = tuple(sorted(rule.get("resourceNames", ())))
                        out.add((namespace or "*", group, resource, verb, names))
    return out


def test_rbac_grants_exactly_the_least_privilege_set(rendered: dict[str, list[Obj]]) -> None:
    for variant in VARIANTS:
        assert grants(rendered[variant]) == EXPECTED_GRANTS, variant
    found = grants(rendered["default"])
    assert not [g for g in found if "*" in g[1:4]], "no wildcards"
    assert not [g for g in found if g[2] == "secrets"], "no Secrets"
    reads = ("get", "list", "watch")
    cluster_wide_writes = {(g[2], g[3]) for g in found if g[0] == "*" and g[3] not in reads}
    assert cluster_wide_writes == {("nodes", "patch")}, "the only cluster-wide write: a Node's podCIDR"


# kubernetes client method -> resource: (apiGroup, plural). A new API call in
# webhook/ that is missing here fails the test below: add it here and to RBAC.
CLIENT_RESOURCES = {
    "node": ("", "nodes"),
    "config_map": ("", "configmaps"),
    "pod": ("", "pods"),
    "lease": ("coordination.k8s.io", "leases"),
    "event": ("", "events"),
}
CLIENT_VERBS = {
    "read": "get",
    "list": "list",
    "create": "create",
    "patch": "patch",
    "replace": "update",
    "delete": "delete",
}
VERB_AND_RESOURCE = re.compile(
    r"(read|list|create|patch|replace|delete)_(?:namespaced_)?([a-z_]+?)"
    r"(?:_status|_scale)?(?:_for_all_namespaces)?(?:_with_http_info)?$"
)


def client_methods() -> set[str]:
    """Every API method of the official client (CoreV1Api.list_node, ...)."""
    import kubernetes.client

    return {
        name
        for cls_name in dir(kubernetes.client)
        if cls_name.endswith("Api")
        for name in dir(getattr(kubernetes.client, cls_name))
        if VERB_AND_RESOURCE.match(name)
    }


# Code that runs with the operator's own kubeconfig (`flannel-guard doctor`, the package
# webhook/doctor/), never with the webhook's ServiceAccount: its calls need no grant.
OPERATOR_ONLY = {"doctor"}


def api_calls_in_code(sources: dict[str, str] | None = None) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of each kubernetes-client method used under webhook/.

    A method counts whether it is called (``core.list_node(...)``), handed on
    (``asyncio.to_thread(core.read_namespaced_config_map, ...)``) or named in a string
    (``raw_request(api, "create_namespaced_lease", path)``, webhook/kube/raw.py). A list is a
    watch too when called with ``watch=True`` or handed to ``Watch().stream``.
    """
    if sources is None:
        # Keyed by path: two modules of one name (core/ and kube/ policyparams.py) are both read.
        sources = {str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / "webhook").rglob("*.py")
                   if p.relative_to(ROOT / "webhook").parts[0].removesuffix(".py") not in OPERATOR_ONLY}
    methods = client_methods()
    calls = set()
    for filename, text in sources.items():
        tree = ast.parse(text)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in methods:
                verb, resource = VERB_AND_RESOURCE.match(node.value).groups()
                assert resource in CLIENT_RESOURCES, f"{filename}: {node.value}: add it to RBAC and here"
                group, plural = CLIENT_RESOURCES[resource]
                calls.add((group, plural, CLIENT_VERBS[verb]))
                parent = parents.get(node)
                if verb == "list" and isinstance(parent, ast.Call) and any(
                    k.arg == "watch" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in parent.keywords
                ):
                    calls.add((group, plural, "watch"))
                continue
            if not (isinstance(node, ast.Attribute) and node.attr in methods):
                continue
            match = VERB_AND_RESOURCE.match(node.attr)
            assert match, node.attr
            verb, resource = match.groups()
            assert resource in CLIENT_RESOURCES, f"{filename}: {node.attr}: add it to RBAC and here"
            group, plural = CLIENT_RESOURCES[resource]
            calls.add((group, plural, CLIENT_VERBS[verb]))
            parent = parents.get(node)
            watched = (
                isinstance(parent, ast.Call)
                and parent.func is node
                and any(
                    k.arg == "watch" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in parent.keywords
                )
            ) or (
                isinstance(parent, ast.Call)
                and isinstance(parent.func, ast.Attribute)
                and parent.func.attr == "stream"
            )
            if verb == "list" and watched:
                calls.add((group, plural, "watch"))
    return calls


def test_the_call_scanner_finds_calls_references_and_watches() -> None:
    """A control: the scanner sees each way the code reaches the API."""
    code = """
core.list_node(_preload_content=False)
core.list_node(watch=True)
asyncio.to_thread(get, core.read_namespaced_config_map, "kube-system")
watch.Watch().stream(coord.list_namespaced_lease, "flannel-guard")
core.list_namespaced_pod("kube-system", label_selector="component=kube-controller-manager")
raw_request(api, "replace_namespaced_lease", path, body=body)
raw_response(api, "list_namespaced_config_map", path, watch=True)
path.read_bytes()
"""
    assert api_calls_in_code({"example.py": code}) == {
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("", "configmaps", "get"),
        ("coordination.k8s.io", "leases", "list"),
        ("coordination.k8s.io", "leases", "watch"),
        ("coordination.k8s.io", "leases", "update"),
        ("", "configmaps", "list"),
        ("", "configmaps", "watch"),
        ("", "pods", "list"),
    }


def test_the_call_scanner_recognises_client_methods() -> None:
    """A control: the scanner knows the calls the cluster code will make."""
    methods = client_methods()
    for name in ("list_node", "read_namespaced_config_map", "create_namespaced_lease",
                 "list_namespaced_pod", "delete_namespaced_lease"):  # fmt: skip
        assert name in methods
        verb, resource = VERB_AND_RESOURCE.match(name).groups()
        assert resource in CLIENT_RESOURCES and verb in CLIENT_VERBS


def test_rbac_covers_every_api_call_the_code_makes_and_no_more(rendered: dict[str, list[Obj]]) -> None:
    granted = {(g[1], g[2], g[3]) for g in grants(rendered["default"])}
    assert api_calls_in_code() == granted


# --- Dockerfile ------------------------------------------------------------------------


def test_dockerfile_is_hadolint_clean() -> None:
    result = subprocess.run(
        [str(need_tool(HADOLINT)), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_cli_as_numeric_non_root_on_the_cluster_port() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 65532(:65532)?$", text, re.M)
    assert re.search(rf"^EXPOSE {PORT_IN_CLUSTER} {PROBE_PORT_IN_CLUSTER}$", text, re.M)
    assert 'ENTRYPOINT ["flannel-guard"]' in text
    assert 'CMD ["serve", "--in-cluster"]' in text
    # Only the pinned wheels, never an index (tests/test_image.py builds and runs it).
    assert "--no-index" in text and "-c /wheels/constraints.txt" in text


def test_dockerignore_keeps_keys_out_of_the_build_context() -> None:
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("*") :][0] == "*"  # deny all, then allow
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert allowed == {"constraints.txt", "build/wheels/"}


def test_generated_keys_are_git_ignored() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["manifests/certs/tls.key", "manifests/certs/ca.key", "manifests/certs/tls.crt"]
    kept = ["manifests/certs/README.md", "manifests/certs/kustomization.yaml"]
    ignored = subprocess.run(
        ["git", "check-ignore", *paths, *kept], capture_output=True, text=True, cwd=ROOT
    ).stdout.split()
    assert ignored == paths

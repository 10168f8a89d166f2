"""charts/flannel-guard renders the same objects as manifests/ (kustomize) for the same choices.

Both are rendered with the real tools from ``make tools`` (``tools/bin/helm``,
``tools/bin/kubectl kustomize``) and compared object by object, keyed by kind,
namespace and name; the chart's output is validated against the Kubernetes 1.33
schemas as the kustomize output is (``kubernetes-validate``, strict), and
``helm lint`` must pass for every choice.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_manifests import CRD_KINDS, K8S_VERSION, kustomize, need_tool

from webhook.core.constants import NAMESPACE, SERVICE

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "flannel-guard"
HELM = ROOT / "tools" / "bin" / "helm"
MANIFESTS = ROOT / "manifests"

Obj = dict[str, Any]
Key = tuple[str, str, str]

#: kustomize overlays (written into a copy of manifests/) and the helm values of the same choices.
#: "components" run in this order, then "args" (a local component appending container args).
CHOICES: dict[str, dict[str, Any]] = {
    "default": {"overlay": None, "values": {}},
    "cert-manager": {"overlay": None, "values": {"certManager.enabled": "true"}},
    "cert-manager+fix-network": {
        "overlay": {"resources": ["../cert-manager"], "components": ["fix-network"]},
        "values": {"certManager.enabled": "true", "fixNetwork": "true"},
    },
    "everything": {
        "overlay": {"resources": ["../../base", "../../certs"],
                    "components": ["fix-network", "client-ca", "single-replica", "prometheus"],
                    "args": ["--cluster-cidr", "172.18.0.0/16,fd00:10::/56", "--mode", "warn",
                             "--allocate", "off"]},
        "values": {"fixNetwork": "true", "clientCA.enabled": "true", "replicas": "1",
                   "prometheus.enabled": "true", "clusterCidr": "172.18.0.0/16\\,fd00:10::/56",
                   "mode": "warn", "allocate": "false"},
    },
    # components/admission-policy: the ValidatingAdmissionPolicies and their bindings.
    "admission-policy": {
        "overlay": {"resources": ["../../base", "../../certs"], "components": ["admission-policy"]},
        "values": {"admissionPolicy.enabled": "true"},
    },
    "image": {
        "overlay": {"resources": ["../../base", "../../certs"], "components": [],
                    "images": [{"name": "ghcr.io/flannel-guard/flannel-guard",
                                "newName": "registry.local:5000/flannel-guard", "newTag": "0.1.0-rc1"}]},
        "values": {"image.repository": "registry.local:5000/flannel-guard", "image.tag": "0.1.0-rc1"},
    },
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of manifests/ with fresh certificates and one overlay per choice."""
    need_tool(HELM)
    root = tmp_path_factory.mktemp("helm") / "manifests"
    kept = {"README.md", "kustomization.yaml"}  # never a developer's keys
    shutil.copytree(MANIFESTS, root, ignore=lambda d, names: (
        [n for n in names if n not in kept] if Path(d).name == "certs" else []))
    subprocess.run([sys.executable, "-m", "webhook", "certs", "--service", SERVICE, "--namespace",
                    NAMESPACE, "--out", str(root / "certs")], check=True, capture_output=True, cwd=ROOT)
    for name, choice in CHOICES.items():
        spec = choice["overlay"]
        if spec is None:
            continue
        overlay = root / "overlays" / f"choice-{name}"
        overlay.mkdir()
        components = [f"../../components/{c}" for c in spec["components"]]
        if spec.get("args"):
            (overlay / "args").mkdir()
            ops = [{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": a}
                   for a in spec["args"]]
            (overlay / "args" / "kustomization.yaml").write_text(yaml.safe_dump({
                "apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component",
                "patches": [{"target": {"kind": "Deployment", "name": SERVICE},
                             "patch": yaml.safe_dump(ops)}],
            }))
            components.append("args")
        if "../../certs" in spec["resources"]:
            components.append("../../components/ca-bundle-from-secret")
        doc: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                               "resources": spec["resources"]}
        if components:
            doc["components"] = components
        if spec.get("images"):
            doc["images"] = spec["images"]
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    return root


def overlay_dir(tree: Path, name: str) -> Path:
    if name == "default":
        return tree
    if name == "cert-manager":
        return tree / "overlays" / "cert-manager"
    return tree / "overlays" / f"choice-{name}"


def helm_args(tree: Path, name: str) -> list[str]:
    values = CHOICES[name]["values"]
    # kustomize renders the Namespace; the chart does when asked (its default is --create-namespace).
    args = ["--set", "createNamespace=true"]
    args += [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]
    if values.get("certManager.enabled") != "true":
        certs = tree / "certs"
        args += ["--set-file", f"tls.crt={certs / 'tls.crt'}", "--set-file", f"tls.key={certs / 'tls.key'}",
                 "--set-file", f"tls.ca={certs / 'ca.crt'}"]
    return args


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(need_tool(HELM)), *args], capture_output=True, text=True, check=False,
                          cwd=ROOT)


def helm_template(tree: Path, name: str) -> list[Obj]:
    result = helm("template", "flannel-guard", str(CHART), "--namespace", NAMESPACE, *helm_args(tree, name))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def normalized(objs: list[Obj]) -> dict[Key, Obj]:
    """Keyed by kind/namespace/name; base64 without the line folds kustomize adds."""
    out: dict[Key, Obj] = {}
    for o in objs:
        o = yaml.safe_load(yaml.safe_dump(o))  # a deep copy
        if o["kind"] == "Secret":
            o["data"] = {k: re.sub(r"\s", "", v) for k, v in o["data"].items()}
        for hook in o.get("webhooks", []) if o["kind"].endswith("WebhookConfiguration") else []:
            if "caBundle" in hook["clientConfig"]:
                hook["clientConfig"]["caBundle"] = re.sub(r"\s", "", hook["clientConfig"]["caBundle"])
        key = (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
        assert key not in out, f"{key} rendered twice"
        out[key] = o
    return out


@pytest.fixture(scope="module")
def renders(tree: Path) -> dict[str, tuple[dict[Key, Obj], dict[Key, Obj]]]:
    return {name: (normalized(kustomize(overlay_dir(tree, name))), normalized(helm_template(tree, name)))
            for name in CHOICES}


@pytest.mark.parametrize("name", CHOICES)
def test_chart_and_kustomize_render_the_same_objects(
        renders: dict[str, tuple[dict[Key, Obj], dict[Key, Obj]]], name: str) -> None:
    from_kustomize, from_helm = renders[name]
    assert sorted(from_helm) == sorted(from_kustomize)
    for key, expected in from_kustomize.items():
        assert from_helm[key] == expected, f"{name}: {key} differs"


def test_the_choices_reach_the_container(renders: dict[str, tuple[dict[Key, Obj], dict[Key, Obj]]]) -> None:
    """A control: the comparison is not of two identical defaults."""
    from webhook.cli import _parser

    _, everything = renders["everything"]
    deployment = everything[("Deployment", NAMESPACE, SERVICE)]
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    args = _parser().parse_args(c["args"])
    assert (args.fix_network, args.mode, args.allocate, args.cluster_cidr) == (
        True, "warn", "off", "172.18.0.0/16,fd00:10::/56")
    assert str(args.client_ca) == "/etc/flannel-guard/client-ca/ca.crt"
    assert deployment["spec"]["replicas"] == 1
    _, image = renders["image"]
    (c,) = image[("Deployment", NAMESPACE, SERVICE)]["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "registry.local:5000/flannel-guard:0.1.0-rc1"
    _, default = renders["default"]
    (c,) = default[("Deployment", NAMESPACE, SERVICE)]["spec"]["template"]["spec"]["containers"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert c["image"] == f"ghcr.io/flannel-guard/flannel-guard:{chart['appVersion']}"


def test_the_admission_policy_value_renders_the_component_and_is_off_by_default(
        renders: dict[str, tuple[dict[Key, Obj], dict[Key, Obj]]]) -> None:
    """A control: the policy choice is compared on real objects, not on two empty renders."""
    from webhook.core.constants import LEASE_POLICY, NODE_POLICY, POLICY_PARAMS_CONFIGMAP

    def policies(objs: dict[Key, Obj]) -> list[Key]:
        return sorted(k for k in objs if k[0].startswith("ValidatingAdmissionPolicy"))

    _, from_helm = renders["admission-policy"]
    assert policies(from_helm) == sorted((kind, "", name) for name in (NODE_POLICY, LEASE_POLICY)
                                         for kind in ("ValidatingAdmissionPolicy",
                                                      "ValidatingAdmissionPolicyBinding"))
    ref = from_helm[("ValidatingAdmissionPolicyBinding", "", NODE_POLICY)]["spec"]["paramRef"]
    assert ref == {"name": POLICY_PARAMS_CONFIGMAP, "namespace": NAMESPACE,
                   "parameterNotFoundAction": "Allow"}
    assert all(policies(renders[name][1]) == [] for name in CHOICES if name != "admission-policy")


@pytest.mark.parametrize("name", CHOICES)
def test_chart_output_is_valid_against_the_kubernetes_schemas(
        renders: dict[str, tuple[dict[Key, Obj], dict[Key, Obj]]], name: str) -> None:
    _, from_helm = renders[name]
    errors = []
    for (kind, _, obj_name), o in from_helm.items():
        if kind in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{kind}/{obj_name}: {e.message} at {list(e.path)}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("name", CHOICES)
def test_helm_lint_passes(tree: Path, name: str) -> None:
    result = helm("lint", str(CHART), "--strict", "--namespace", NAMESPACE, *helm_args(tree, name))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_chart_refuses_a_missing_certificate_and_a_wrong_mode(tree: Path) -> None:
    result = helm("template", "flannel-guard", str(CHART), "--namespace", NAMESPACE)
    assert result.returncode != 0 and "tls.ca (PEM) is required" in result.stderr
    result = helm("template", "flannel-guard", str(CHART), "--namespace", NAMESPACE,
                  "--set", "certManager.enabled=true", "--set", "mode=audit")
    assert result.returncode != 0 and "at '/mode'" in result.stderr  # values.schema.json


def test_the_documented_install_creates_no_namespace_object_and_prints_what_to_check(tree: Path) -> None:
    """`helm install --create-namespace -n flannel-guard`: Helm makes the namespace (helm/helm#10976)."""
    result = helm("install", "flannel-guard", str(CHART), "--dry-run=client", "--create-namespace",
                  "--namespace", NAMESPACE, *helm_args(tree, "cert-manager")[2:])
    assert result.returncode == 0, result.stderr
    manifest, notes = result.stdout.split("NOTES:", 1)
    kinds = [doc["kind"] for doc in yaml.safe_load_all(manifest.split("MANIFEST:", 1)[1]) if doc]
    assert "Namespace" not in kinds and "Deployment" in kinds
    assert f"kubectl -n {NAMESPACE} rollout status deployment/flannel-guard" in notes
    example = "examples/kube-flannel-wrong-network.yml"
    assert f"kubectl apply --dry-run=server -f {example}" in notes and (ROOT / example).is_file()
    assert "flannel-guard doctor" in notes


@pytest.mark.parametrize(("value", "said"), [
    ("clusterCidr=banana", "/clusterCidr"),
    ("clusterCidr=10.244.0.0/33", "/clusterCidr"),
    ("clusterCidr=300.244.0.0/16", "/clusterCidr"),
    ("port=70000", "/port"),
    ("probePort=0", "/probePort"),
    ("mode=audit", "/mode"),
    ("replicas=0", "/replicas"),
])
def test_the_values_schema_refuses_what_the_program_would(value: str, said: str) -> None:
    result = helm("template", "flannel-guard", str(CHART), "--namespace", NAMESPACE,
                  "--set", "certManager.enabled=true", "--set", value)
    assert result.returncode != 0 and "values don't meet the specifications" in result.stderr
    assert f"at '{said}'" in result.stderr


def test_the_chart_points_home_and_ports_reach_the_container(tree: Path) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert "flannel-io" not in chart["home"]
    result = helm("template", "flannel-guard", str(CHART), "--namespace", NAMESPACE,
                  "--set", "certManager.enabled=true", "--set", "port=10443", "--set", "probePort=10444")
    assert result.returncode == 0, result.stderr
    [deployment] = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--port") + 1] == "10443" and args[args.index("--probe-port") + 1] == "10444"
    assert [p["containerPort"] for p in container["ports"]] == [10443, 10444]


def test_the_manifests_readme_uninstalls_every_role_and_uses_files_that_exist(
        renders: dict[str, tuple[dict[Key, Obj], dict[Key, Obj]]]) -> None:
    text = (MANIFESTS / "README.md").read_text()
    uninstall = text.split("## Uninstall", 1)[1]
    from_kustomize, _ = renders["default"]
    for kind, namespace, name in from_kustomize:
        if kind in ("Role", "RoleBinding") and namespace != NAMESPACE:  # not gone with the namespace
            assert re.search(rf"kubectl -n {namespace} delete role,rolebinding {name}\b", uninstall), name
    for path in re.findall(r"-f (examples/\S+)", text):
        assert (ROOT / path).is_file(), path

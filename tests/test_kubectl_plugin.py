"""``kubectl flannel-guard ...`` through the real kubectl 1.33 (tools/bin/kubectl).

kubectl finds the venv's ``kubectl-flannel_guard`` console script on $PATH (its plugin
list), runs ``check`` through it, and ``doctor`` reads the context kubectl would: the
current one, or ``--context``'s. Two contexts point at two closed loopback ports, so which
one doctor read is in its answer without any server. ``make krew``'s archive is installed as
krew lays it out and run through kubectl too, with no venv of this repository on $PATH.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_emulator import free_port

from webhook import kubectl

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = ROOT / "tools" / "bin" / "kubectl"
VENV_BIN = Path(sys.executable).parent
FIXTURE = ROOT / "tests" / "fixtures" / "kube-flannel-cfg.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if not KUBECTL.is_file():
        pytest.fail("tools/bin/kubectl missing: make tools", pytrace=False)
    if not (VENV_BIN / "kubectl-flannel_guard").is_file():
        pytest.fail("kubectl-flannel_guard not in the venv: make venv (pip install -e .)", pytrace=False)
    home = tmp_path_factory.mktemp("kubectl-home")
    # Only the venv and kubectl: no other kubectl-* plugin of this machine is listed.
    return {"PATH": f"{VENV_BIN}:{KUBECTL.parent}:/usr/bin:/bin", "HOME": str(home),
            "KUBECONFIG": str(home / "absent")}


def kubectl_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KUBECTL), *args], env=env, capture_output=True, text=True,
                          check=False, timeout=120)


def test_kubectl_plugin_list_finds_it(env: dict[str, str]) -> None:
    result = kubectl_run(env, "plugin", "list", "--name-only")
    assert result.returncode == 0, result.stderr
    assert "kubectl-flannel_guard" in result.stdout.split()
    assert "warning" not in result.stderr.lower(), result.stderr


def test_kubectl_flannel_guard_check(env: dict[str, str], tmp_path: Path) -> None:
    good = kubectl_run(env, "flannel-guard", "check", "--cluster-cidr", "10.244.0.0/16", str(FIXTURE))
    assert good.returncode == 0, good.stdout + good.stderr
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(FIXTURE.read_text().replace("10.244.0.0/16", "10.99.0.0/16"))
    bad = kubectl_run(env, "flannel-guard", "check", "--cluster-cidr", "10.244.0.0/16", "-o", "json",
                      str(wrong))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "10.99.0.0/16" in bad.stdout
    version = kubectl_run(env, "flannel-guard", "--version")
    assert version.stdout.strip() == f"flannel-guard {PYPROJECT['project']['version']}"


@pytest.fixture
def two_contexts(env: dict[str, str], tmp_path: Path) -> tuple[dict[str, str], int, int]:
    """A kubeconfig whose current context is ctx-a; ctx-b another cluster; both ports closed."""
    port_a, port_b = free_port(), free_port()
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx-a",
        "clusters": [{"name": "a", "cluster": {"server": f"https://127.0.0.1:{port_a}"}},
                     {"name": "b", "cluster": {"server": f"https://127.0.0.1:{port_b}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "ctx-a", "context": {"cluster": "a", "user": "u"}},
                     {"name": "ctx-b", "context": {"cluster": "b", "user": "u", "namespace": "ns-b"}}],
    }
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(config))
    return {**env, "KUBECONFIG": str(path)}, port_a, port_b


def _doctor(env: dict[str, str], *args: str) -> dict[str, Any]:
    result = kubectl_run(env, "flannel-guard", "doctor", "--timeout", "2", "-o", "json", *args)
    assert result.returncode == 2, result.stdout + result.stderr  # 2: the cluster is unreadable
    return json.loads(result.stdout)


def test_doctor_reads_kubectls_current_context(two_contexts: tuple[dict[str, str], int, int]) -> None:
    env, port_a, _ = two_contexts
    assert f"https://127.0.0.1:{port_a}:" in _doctor(env)["error"]


def test_doctor_reads_the_context_given(two_contexts: tuple[dict[str, str], int, int],
                                        tmp_path: Path) -> None:
    env, _, port_b = two_contexts
    assert f"https://127.0.0.1:{port_b}:" in _doctor(env, "--context", "ctx-b")["error"]
    assert f"https://127.0.0.1:{port_b}:" in _doctor(env, "--context=ctx-b", "-n", "guard")["error"]
    # --kubeconfig as kubectl takes it: the file's current context.
    other = tmp_path / "other"
    other.write_text(Path(env["KUBECONFIG"]).read_text().replace("current-context: ctx-a",
                                                                 "current-context: ctx-b"))
    assert f"https://127.0.0.1:{port_b}:" in _doctor(env, "--kubeconfig", str(other))["error"]
    unknown = kubectl_run(env, "flannel-guard", "doctor", "--context", "nope")
    assert unknown.returncode == 2 and "nope" in unknown.stderr


@pytest.mark.parametrize(("argv", "flags", "rest"), [
    (["--context", "c", "-n", "ns", "-o", "json"], {"context": "c", "namespace": "ns"}, ["-o", "json"]),
    (["--context=c", "--namespace=ns"], {"context": "c", "namespace": "ns"}, []),
    (["-nns", "--cluster-cidr", "10.0.0.0/8"], {"namespace": "ns"}, ["--cluster-cidr", "10.0.0.0/8"]),
    (["--kubeconfig", "/k", "--user", "u", "--cluster", "x"],
     {"kubeconfig": "/k", "user": "u", "cluster": "x"}, []),
    (["--html", "r.html", "--", "-n", "x"], {}, ["--html", "r.html", "--", "-n", "x"]),
])
def test_kubectl_flags_are_told_apart(argv: list[str], flags: dict[str, str], rest: list[str]) -> None:
    assert kubectl.split_kubectl_flags(argv) == (flags, rest)


def test_namespace_is_the_guards_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr("webhook.cli.main", lambda argv: seen.append(list(argv)) or 0)
    assert kubectl.main(["doctor", "-n", "guard", "-o", "json"]) == 0
    assert kubectl.main(["check", "-n", "x"]) == 0  # not doctor: passed through unchanged
    assert seen == [["doctor", "-o", "json", "--guard-namespace", "guard"], ["check", "-n", "x"]]


@pytest.fixture(scope="module")
def krew_build() -> dict[str, Any]:
    """``make krew``: the archives and the manifest with their sha256 (a no-op when up to date)."""
    result = subprocess.run(["make", "-s", "krew"], cwd=ROOT, capture_output=True, text=True, check=False,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return yaml.safe_load((ROOT / "build" / "krew" / "flannel-guard.yaml").read_text())


def test_the_krew_manifest_names_the_archives_make_krew_packs(krew_build: dict[str, Any]) -> None:
    source = yaml.safe_load((ROOT / "plugins" / "flannel-guard.yaml").read_text())
    assert krew_build["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert krew_build["kind"] == "Plugin"
    # krew: the plugin's name is the command; its bin is kubectl-<name>, dashes as underscores.
    name = krew_build["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", name) and name == "flannel-guard"
    spec = krew_build["spec"]
    assert spec["version"] == f"v{PYPROJECT['project']['version']}"
    assert spec["shortDescription"] and len(spec["shortDescription"]) <= 80
    script = "kubectl-" + name.replace("-", "_")
    assert script in PYPROJECT["project"]["scripts"]
    assert [p["selector"] for p in spec["platforms"]] == [p["selector"] for p in source["spec"]["platforms"]]
    for platform in spec["platforms"]:
        labels = platform["selector"]["matchLabels"]
        archive = ROOT / "build" / "krew" / platform["uri"].rsplit("/", 1)[1]
        assert archive.name.endswith(f"-{labels['os']}-{labels['arch']}.tar.gz")
        assert spec["version"] in platform["uri"] and platform["uri"].startswith("https://")
        assert platform["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
        assert platform["bin"] == script


def krew_install(manifest: dict[str, Any], arch: str, store: Path) -> Path:
    """What ``kubectl krew install`` does: unpack, move each ``files`` entry, link ``bin``."""
    (platform,) = [p for p in manifest["spec"]["platforms"] if p["selector"]["matchLabels"]["arch"] == arch]
    unpacked = store / "download"
    with tarfile.open(ROOT / "build" / "krew" / platform["uri"].rsplit("/", 1)[1]) as tar:
        tar.extractall(unpacked, filter="data")
    install = store / "store" / manifest["metadata"]["name"] / manifest["spec"]["version"]
    install.mkdir(parents=True)
    for op in platform["files"]:
        matches = sorted(unpacked.glob(op["from"]))
        assert matches, op
        target = install / op["to"]
        target.mkdir(parents=True, exist_ok=True)
        for path in matches:
            path.rename(target / path.name)
    bin_dir = store / "bin"
    bin_dir.mkdir()
    (bin_dir / platform["bin"]).symlink_to(install / platform["bin"])
    return bin_dir


def test_the_krew_archive_runs_through_kubectl(krew_build: dict[str, Any], tmp_path: Path) -> None:
    bin_dir = krew_install(krew_build, "amd64", tmp_path / "krew")
    python = shutil.which("python3.11", path="/usr/bin:/usr/local/bin")
    assert python, "python3.11 missing"
    # No venv of this repository on the way: the plugin's own, made on first run from its wheels.
    env = {"PATH": f"{bin_dir}:{KUBECTL.parent}:{Path(python).parent}:/usr/bin:/bin",
           "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "absent")}
    listed = kubectl_run(env, "plugin", "list", "--name-only")
    assert listed.returncode == 0 and "kubectl-flannel_guard" in listed.stdout.split(), listed.stderr
    version = kubectl_run(env, "flannel-guard", "--version")
    assert version.returncode == 0, version.stderr[-3000:]
    assert version.stdout.strip() == f"flannel-guard {PYPROJECT['project']['version']}"
    checked = kubectl_run(env, "flannel-guard", "check", "--cluster-cidr", "10.244.0.0/16", str(FIXTURE))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert (tmp_path / "krew" / "store" / "flannel-guard" / krew_build["spec"]["version"] / "venv").is_dir()

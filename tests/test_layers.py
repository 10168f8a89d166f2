"""The layers are a contract (pyproject.toml [tool.importlinter], run by `make test`).

A control shows the contract bites: a copy of the package with one upward import breaks it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT), "--config", str(cwd / "pyproject.toml"), "--no-cache"],
                          cwd=cwd, env=env, capture_output=True, text=True, check=False)


def test_the_layers_hold() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "imported"), [
    ("core/cidr.py", "webhook.kube.cluster"),
    # net-conf.json's own order: Go's encoding/json must not reach back into a backend.
    ("core/rules/gojson.py", "webhook.core.rules.backends"),
], ids=["core-imports-kube", "gojson-imports-backends"])
def test_an_upward_import_breaks_the_contract(tmp_path: Path, module: str, imported: str) -> None:
    shutil.copytree(ROOT / "webhook", tmp_path / "webhook", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "webhook" / module
    violation = f"\nimport {imported}  # noqa: E402 (the control's violation)\n"
    path.write_text(path.read_text() + violation)
    result = lint(tmp_path)
    importer = "webhook." + module.removesuffix(".py").replace("/", ".")
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and f"{importer} -> {imported}" in result.stdout

"""``make demo`` and ``make run``: what a newcomer runs first.

``make demo`` serves the emulated API with a broken cluster and runs ``doctor`` and
``doctor --html`` against it; ``make run`` installs only what running needs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_runs_doctor_and_doctor_html_on_a_broken_cluster(tmp_path: Path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "demo_cluster.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "flannel-guard doctor: UNHEALTHY" in r.stdout
    # The case first: flannel's Network, named by flannel's own crash, not kube-proxy's.
    root = "ROOT CAUSE: flannel Network 10.244.0.0/16 does not match the cluster-cidr 172.18.0.0/16"
    assert root in r.stdout
    for code in ("ClusterCIDRDisagreement", "BadNodePodCIDR", "IgnoredInKubeMode", "FlannelPodNotReady"):
        assert code in r.stdout
    page = tmp_path / "doctor.html"
    assert f"wrote the HTML report to {page}" in r.stderr and "Traceback" not in r.stderr
    assert "flannel Network 10.244.0.0/16 does not match" in page.read_text()


def _dry_run(target: str) -> str:
    return subprocess.run(["make", "-n", "-B", target], capture_output=True, text=True, timeout=60,
                          check=True, cwd=ROOT).stdout


def test_make_run_installs_the_runtime_dependencies_only_and_says_so():
    run = _dry_run("run")
    assert "-e ." in run and ".[test]" not in run
    assert "installing flannel-guard and its runtime dependencies" in run and " -q " not in run
    assert ".[test]" in _dry_run("demo") and "examples/demo_cluster.py" in _dry_run("demo")

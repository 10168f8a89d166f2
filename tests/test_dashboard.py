"""The Grafana dashboard (manifests/components/prometheus/dashboard.json, the chart's copy).

Every query is PromQL promtool accepts (each one loaded as a recording rule, Grafana's
variables replaced as Grafana would), and every series it names is one a real
``flannel-guard serve`` exports: scraped from the process's /metrics, in cluster mode on
the loopback API (where the pool and claim gauges exist).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import node, review
from kube_emulator import ApiThread, free_port, kubeconfig_file
from server_process import serve

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "manifests" / "components" / "prometheus" / "dashboard.json"
CHART_COPY = ROOT / "charts" / "flannel-guard" / "files" / "grafana-dashboard.json"
RULES = ROOT / "manifests" / "components" / "prometheus" / "rules.yaml"
# What Grafana puts in place of its variables when the queries run.
GRAFANA_VARIABLES = {"$__rate_interval": "2m", "$job": ".+"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queries() -> list[str]:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):  # label_values(metric, label): the metric is a series too
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query["query"])
            assert match, query
            exprs.append(match.group(1))
    return exprs


def substituted(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr}"
    return expr


def metric_names(exprs: list[str]) -> set[str]:
    return {name for e in exprs for name in re.findall(r"\bflannel_guard_\w+", e)}


def test_the_chart_ships_the_same_dashboard() -> None:
    assert CHART_COPY.read_bytes() == DASHBOARD.read_bytes()


def test_the_dashboard_is_complete() -> None:
    dash = dashboard()
    assert dash["uid"] == "flannel-guard" and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    # The pool and claims are on it, not only the request counters.
    names = metric_names(queries())
    assert {"flannel_guard_pool_blocks", "flannel_guard_pool_capacity_blocks",
            "flannel_guard_pending_claims", "flannel_guard_pending_claims_cap"} <= names


def test_promtool_accepts_every_query(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make debs` installs Debian's prometheus package", pytrace=False)
    exprs = queries()
    recorded = [{"record": f"flannel_guard_dashboard:query{i}", "expr": substituted(e)}
                for i, e in enumerate(exprs)]
    rules = {"groups": [{"name": "dashboard", "rules": recorded}]}
    (tmp_path / "dashboard-rules.yaml").write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", "dashboard-rules.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout
    # A control: promtool does refuse a broken query.
    broken = {"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum by (le (rate(x[5m]))"}]}]}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    refused = subprocess.run([promtool, "check", "rules", "broken.yaml"], cwd=tmp_path,
                             capture_output=True, text=True, check=False, timeout=300)
    assert refused.returncode != 0


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[str]:
    """/metrics of a server in cluster mode on the loopback API, after one denial and one admission."""
    probe_port = free_port()
    api = ApiThread()
    try:
        cfg = kubeconfig_file(tmp_path / "kubeconfig", api.api.url)
        with serve(tmp_path, "--kubeconfig", str(cfg), "--probe-port", str(probe_port),
                   cluster_cidr="10.244.0.0/22") as running:
            client = running.client()
            client.post("/validate", json=review(node("bad", "192.168.0.0/24")))
            client.post("/validate", json=review(node("good", "10.244.1.0/24")))
            yield httpx.get(f"http://127.0.0.1:{probe_port}/metrics", timeout=10).text
    finally:
        api.close()


def exported_series(text: str) -> set[str]:
    """Names with a sample, and the series a declared family has once it is counted."""
    names = {m.group(1) for m in re.finditer(r"^(flannel_guard_\w+?)(?:\{| )", text, re.M)}
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    for family, kind in re.findall(r"^# TYPE (flannel_guard_\w+) (\w+)$", text, re.M):
        names |= {family.removesuffix("_total") + s if kind == "counter" else family + s
                  for s in suffixes.get(kind, [""])}
    return names


def test_every_series_the_dashboard_names_is_exported(scraped: str) -> None:
    exported = exported_series(scraped)
    used = metric_names(queries())
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    # The alert rules' series are among them too (the dashboard shows what alerts fire on).
    rule_names = metric_names([r["expr"] for g in yaml.safe_load(RULES.read_text())["spec"]["groups"]
                               for r in g["rules"]])
    assert rule_names <= exported


def test_a_name_the_server_does_not_export_is_caught(scraped: str) -> None:
    """A control: a misspelt series would not pass."""
    assert "flannel_guard_pool_block" not in exported_series(scraped)
    assert "flannel_guard_admission_requests" not in exported_series(scraped)  # a counter: _total only

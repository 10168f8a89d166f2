"""components/prometheus: the alert rules under promtool, and a real Prometheus scraping the server.

Debian's ``prometheus`` package (system.mk) ships both ``promtool`` and the server.
The rules are the PrometheusRule's ``spec`` (what the Prometheus Operator loads);
``promtool test rules`` runs tests/fixtures/prometheus/rules-test.yaml on them.
Then a real Prometheus scrapes a real ``flannel-guard serve`` on 127.0.0.1 with
the PodMonitor's endpoint settings (scheme, path, the probe port), evaluates the
same rules, and sees the series and an alert go pending when the pool fills up.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import node, review
from kube_emulator import ApiThread, free_port, kubeconfig_file
from kube_emulator import node as api_node
from server_process import ServerProcess, serve

ROOT = Path(__file__).resolve().parent.parent
COMPONENT = ROOT / "manifests" / "components" / "prometheus"
RULES_TEST = ROOT / "tests" / "fixtures" / "prometheus" / "rules-test.yaml"
RULES_FILE = "flannel-guard-rules.yaml"  # the name rules-test.yaml loads


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: `make debs` installs Debian's prometheus package", pytrace=False)
    return path


def rule_spec() -> dict[str, Any]:
    rule = yaml.safe_load((COMPONENT / "rules.yaml").read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    return rule["spec"]


def endpoint() -> dict[str, Any]:
    monitor = yaml.safe_load((COMPONENT / "podmonitor.yaml").read_text())
    (ep,) = monitor["spec"]["podMetricsEndpoints"]
    return ep


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    (tmp_path / RULES_FILE).write_text(yaml.safe_dump(rule_spec()))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    return tmp_path


def promtool(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True,
                          check=False, timeout=300)


def test_promtool_check_rules(rules_dir: Path) -> None:
    result = promtool(rules_dir, "check", "rules", RULES_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_spec()['groups'][0]['rules'])} rules found" in result.stdout


def test_promtool_test_rules(rules_dir: Path) -> None:
    result = promtool(rules_dir, "test", "rules", RULES_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules_catches_a_wrong_expectation(rules_dir: Path) -> None:
    """A control: the unit tests are not vacuous."""
    broken = RULES_TEST.read_text().replace("severity: critical", "severity: warning")
    assert broken != RULES_TEST.read_text()
    (rules_dir / RULES_TEST.name).write_text(broken)
    result = promtool(rules_dir, "test", "rules", RULES_TEST.name)
    assert result.returncode != 0


def rule_metric_names() -> set[str]:
    names: set[str] = set()
    for group in rule_spec()["groups"]:
        for rule in group["rules"]:
            names |= set(re.findall(r"\bflannel_guard_\w+", rule["expr"]))
    return names


def exposed_names(text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^(flannel_guard_\w+?)(?:\{| )", text, re.M)}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, int, ApiThread]]:
    """A server in cluster mode on the loopback API, as deployed (the API's series exist then)."""
    probe_port = free_port()
    api = ApiThread()
    try:
        cfg = kubeconfig_file(tmp_path / "kubeconfig", api.api.url)
        with serve(tmp_path, "--kubeconfig", str(cfg), "--probe-port", str(probe_port),
                   cluster_cidr="10.244.0.0/22") as running:
            yield running, probe_port, api
    finally:
        api.close()


def test_every_series_the_rules_use_is_one_the_server_emits(
        server: tuple[ServerProcess, int, ApiThread]) -> None:
    running, probe_port, _ = server
    client = running.client()
    # Counters with labels have samples once counted: one denial, one allowed.
    client.post("/validate", json=review(node("bad", "192.168.0.0/24")))
    client.post("/validate", json=review(node("good", "10.244.1.0/24")))
    text = httpx.get(f"http://127.0.0.1:{probe_port}/metrics", timeout=10).text
    exposed = exposed_names(text)
    # internal_errors_total has no sample until a rule fails: its family is declared.
    declared = set(re.findall(r"^# TYPE (flannel_guard_\w+) counter$", text, re.M))
    exposed |= {n if n.endswith("_total") else f"{n}_total" for n in declared}
    assert rule_metric_names() <= exposed, rule_metric_names() - exposed


def query(base: str, promql: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{base}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert resp["status"] == "success", resp
    return resp["data"]["result"]


def wait_for(what: str, check: Any, deadline_s: float = 120) -> Any:
    deadline = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"Prometheus never showed {what}"
        time.sleep(0.25)


def test_a_real_prometheus_scrapes_the_server_with_the_shipped_settings(
        server: tuple[ServerProcess, int, ApiThread], tmp_path: Path) -> None:
    running, probe_port, api = server
    ep = endpoint()
    deployment = yaml.safe_load((ROOT / "manifests" / "base" / "deployment.yaml").read_text())
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    # The PodMonitor and the prometheus.io annotations say the same.
    assert (annotations["prometheus.io/scheme"], annotations["prometheus.io/path"]) == (
        ep["scheme"], ep["path"])
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    (port,) = [p for p in c["ports"] if p["name"] == ep["port"]]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert c["args"][c["args"].index("--probe-port") + 1] == str(port["containerPort"])

    (tmp_path / RULES_FILE).write_text(yaml.safe_dump(rule_spec()))
    config = {
        # The PodMonitor scrapes every 30 s; 1 s here, so that the test waits on events, not minutes.
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [RULES_FILE],
        "scrape_configs": [{
            "job_name": "podMonitor/flannel-guard/flannel-guard/0",
            "scheme": ep["scheme"],
            "metrics_path": ep["path"],
            # In the cluster: the pod IP and its port named ep["port"] (the probe port).
            "static_configs": [{"targets": [f"127.0.0.1:{probe_port}"],
                                "labels": {"namespace": "flannel-guard", "pod": "flannel-guard-0"}}],
        }],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    web = free_port()
    base = f"http://127.0.0.1:{web}"
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{web}",
         "--log.level=warn"], cwd=tmp_path, stdout=log, stderr=log)
    try:
        def ready() -> bool:
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                return httpx.get(f"{base}/-/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("readiness", ready)
        up = wait_for("a successful scrape", lambda: [r for r in query(base, "up") if r["value"][1] == "1"])
        assert up[0]["metric"]["job"] == config["scrape_configs"][0]["job_name"]
        (info,) = wait_for("build_info", lambda: query(base, "flannel_guard_build_info"))
        assert info["metric"]["version"] and info["metric"]["pod"] == "flannel-guard-0"
        free = wait_for("the pool", lambda: query(base, 'flannel_guard_pool_blocks{state="free"}'))
        assert free[0]["metric"]["cluster_cidr"] == "10.244.0.0/22" and free[0]["value"][1] == "4"

        # Fill the pool (4 blocks of /24 in a /22): the rules see it and the alerts go pending.
        client = running.client()
        for i in range(4):  # as the API server does: /mutate, /validate of the patched Node, stored
            patch = client.post("/mutate", json=review(node(f"worker-{i}"))).json()["response"]["patch"]
            cidr = json.loads(base64.b64decode(patch))[0]["value"]
            checked = client.post("/validate", json=review(node(f"worker-{i}", cidr))).json()["response"]
            assert checked["allowed"]
            api.call(api.api.put_node(api_node(f"worker-{i}", cidr)))
            # Indexed (no claim waits for its Node): the next join is within the pending cap (1 here).
            wait_for(f"worker-{i} indexed",
                     lambda: running.metric("flannel_guard_pending_claims", client) == 0)
        pending = wait_for("FlannelGuardPodCIDRPoolFull pending", lambda: query(
            base, 'ALERTS{alertname="FlannelGuardPodCIDRPoolFull"}'))
        assert pending[0]["metric"]["cluster_cidr"] == "10.244.0.0/22"
        assert pending[0]["metric"]["alertstate"] in {"pending", "firing"}
        assert wait_for("FlannelGuardPodCIDRPoolAlmostFull pending", lambda: query(
            base, 'ALERTS{alertname="FlannelGuardPodCIDRPoolAlmostFull"}'))

        groups = httpx.get(f"{base}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert {r["name"] for r in rules} == {r["alert"] for r in rule_spec()["groups"][0]["rules"]}
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    finally:
        prom.terminate()
        try:
            prom.wait(30)
        except subprocess.TimeoutExpired:
            prom.kill()
        log.close()

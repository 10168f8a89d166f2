"""`flannel-guard check`: exit 0 clean, 1 violations, 2 bad input; text and JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, node

from webhook.cli import main


def nodes_list(*nodes: dict) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(nodes),
                       "metadata": {"resourceVersion": ""}})


def test_clean_manifest_exits_0(capsys):
    assert main(["check", str(FIXTURES / "kube-flannel-cfg.yaml"), "--cluster-cidr", "10.244.0.0/16"]) == 0
    assert "0 violation(s)" in capsys.readouterr().out


def test_seed_mismatch_exits_1_with_the_fix(capsys):
    assert main(["check", str(FIXTURES / "kube-flannel-cfg.yaml"), "--cluster-cidr", "172.18.0.0/16"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  ConfigMap kube-flannel/kube-flannel-cfg" in out
    assert '"Network": "172.18.0.0/16"' in out


def test_kubectl_get_nodes_list_with_a_duplicate_reports_both(tmp_path: Path, capsys):
    # field report #5: the whole range patched on several nodes, plus a duplicate /24.
    f = tmp_path / "nodes.json"
    f.write_text(nodes_list(node("a", "10.244.1.0/24"), node("b", "10.244.1.0/24"),
                            node("c", "10.244.2.0/24"), node("d", "10.244.0.0/16")))
    assert main(["check", str(f), "--cluster-cidr", "10.244.0.0/16", "-o", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    by_name = {o["name"]: {x["code"] for x in o["findings"]} for o in report["objects"]}
    assert by_name["a"] == {"OverlapsNode"} and by_name["b"] == {"OverlapsNode"}
    assert by_name["c"] == {"OverlapsNode"}  # inside d's /16
    assert by_name["d"] == {"WrongSize", "OverlapsNode"}


def test_without_cluster_cidr_the_configmap_is_only_warned(capsys):
    assert main(["check", str(FIXTURES / "kube-flannel-cfg.yaml")]) == 0
    assert "cluster-cidr is unknown" in capsys.readouterr().out


@pytest.mark.parametrize("content", ["a: [unclosed", "\x00\x01"])
def test_unreadable_input_exits_2(tmp_path: Path, content: str):
    f = tmp_path / "bad.yaml"
    f.write_text(content)
    assert main(["check", str(f)]) == 2


def test_missing_file_exits_2(tmp_path: Path):
    assert main(["check", str(tmp_path / "nope.yaml")]) == 2


@pytest.mark.parametrize(("flags", "said"), [
    (["--cluster-cidr", "10.244.0.1/16"], "host bits"),
    (["--cluster-cidr", "not-a-cidr"], "is not a CIDR"),
    (["--flannel-configmap", "no-slash"], "expected NAMESPACE/NAME"),
])
def test_bad_flags_are_usage_errors_exit_2_in_one_line(flags, said, capsys):
    assert main(["check", str(FIXTURES / "kube-flannel-cfg.yaml"), *flags]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1 and "Traceback" not in err
    assert "not-a-cidr/24" not in err  # no hint built from text that is not an address


def test_python_dash_m_webhook_is_the_same_program():
    r = subprocess.run([sys.executable, "-m", "webhook", "check", str(FIXTURES / "kube-flannel-cfg.yaml"),
                        "--cluster-cidr", "172.18.0.0/16"], capture_output=True, text=True, check=False)
    assert r.returncode == 1 and "NetworkMismatch" not in r.stdout and "172.18.0.0/16" in r.stdout


def test_stdin(monkeypatch, capsys):
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO(nodes_list(node("a", "10.99.0.0/24"))))
    assert main(["check", "-", "--cluster-cidr", "10.244.0.0/16"]) == 1
    assert "outside the cluster-cidr" in capsys.readouterr().out


def _node_list(*nodes: tuple[str, list[str]]) -> str:
    """``kubectl get nodes -o json``: stored Nodes (uid, creationTimestamp)."""
    items = []
    for i, (name, cidrs) in enumerate(nodes):
        spec = {"podCIDR": cidrs[0], "podCIDRs": cidrs} if cidrs else {}
        items.append({"apiVersion": "v1", "kind": "Node", "spec": spec, "metadata": {
            "name": name, "uid": f"uid-{i}", "creationTimestamp": "2026-12-01T10:00:00Z"}})
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def test_stored_nodes_get_fixes_that_work_on_stored_nodes_each_with_its_own_free_subnet(tmp_path, capsys):
    listing = tmp_path / "nodes.json"
    listing.write_text(_node_list(("a", ["10.244.1.0/24"]), ("b", ["10.244.1.0/24"]),
                                  ("c", []), ("d", [])))
    assert main(["check", str(listing), "--cluster-cidr", "10.244.0.0/16", "-o", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    fixes = {o["name"]: [f for f in o["findings"] if f["severity"] == "error"] for o in report["objects"]}
    # The two sharing a CIDR: a set podCIDR is immutable, so the fix re-registers the node.
    for name in ("a", "b"):
        [overlap] = fixes[name]
        assert overlap["code"] == "OverlapsNode"
        assert f"kubectl delete node {name}" in overlap["fix"] and "kubectl patch" not in overlap["fix"]
    # The seed's nodes without a podCIDR are findings, each with a different free subnet.
    named = []
    for name in ("c", "d"):
        [missing] = fixes[name]
        assert missing["code"] == "NoPodCIDR" and f"kubectl patch node {name}" in missing["fix"]
        named.append(missing["fix"].split('"podCIDR":"')[1].split('"')[0])
    assert len(set(named)) == 2 and "10.244.1.0/24" not in named


def test_strict_fails_when_nothing_was_checked_or_the_cluster_cidr_is_unknown(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n")
    assert main(["check", str(empty)]) == 0
    assert main(["check", str(empty), "--strict", "--cluster-cidr", "10.244.0.0/16"]) == 1
    assert main(["check", str(FIXTURES / "kube-flannel-cfg.yaml"), "--strict"]) == 1
    out = capsys.readouterr().out
    assert "--strict: no flannel ConfigMap or Node found" in out
    assert "--strict: the cluster-cidr is unknown" in out
    assert main(["check", str(FIXTURES / "kube-flannel-cfg.yaml"), "--strict",
                 "--cluster-cidr", "10.244.0.0/16"]) == 0


NODE_MANIFESTS = """\
apiVersion: v1
kind: Node
metadata:
  name: a
spec:
  podCIDR: 10.244.1.0/24
  podCIDRs: [10.244.1.0/24]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: b}
  spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24]}
- apiVersion: v1
  kind: Node
  metadata: {name: c}
  spec: {podCIDR: 10.99.0.0/24, podCIDRs: [10.99.0.0/24]}
- apiVersion: v1
  kind: Node
  metadata: {name: d}
  spec: {podCIDR: 10.244.0.0/25, podCIDRs: [10.244.0.0/25]}
- apiVersion: v1
  kind: Node
  metadata: {name: e}
  spec: {podCIDR: 10.244.2.1/24, podCIDRs: [10.244.2.1/24]}
- apiVersion: v1
  kind: Node
  metadata: {name: f}
  spec: {podCIDR: 10.244.3.0/24, podCIDRs: [10.244.3.0/24]}
"""


def test_node_manifests_get_distinct_free_cidrs_in_the_allocators_order_to_write_in_the_file(
        tmp_path, capsys):
    # The GitOps repository: a duplicate pair, a node outside the range, a /25, host bits,
    # and a good node (f) whose CIDR no fix may name.
    from ipaddress import ip_network

    from webhook.core.dualstack import DualStackAllocator
    from webhook.core.nodeindex import NodeCidrIndex

    f = tmp_path / "nodes.yml"
    f.write_text(NODE_MANIFESTS)
    assert main(["check", str(f), "--cluster-cidr", "10.244.0.0/16", "-o", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    objects = {o["name"]: o for o in report["objects"]}
    # Every object, List items included, at the line it starts on.
    assert {n: o["location"]["line"] for n, o in objects.items()} == {
        "a": 1, "b": 12, "c": 16, "d": 20, "e": 24, "f": 28}
    assert objects["c"]["source"] == f"{f}:16"
    proposed = []
    for name in "abcde":
        [finding] = [x for x in objects[name]["findings"] if x["severity"] == "error"]
        assert f"in {f}:{objects[name]['location']['line']} (Node {name}) write spec.podCIDR: " \
            in finding["fix"] and "kubectl" not in finding["fix"]
        proposed.append(ip_network(finding["fix"].split("spec.podCIDR: ")[1].split(" ")[0]))
    assert objects["f"]["findings"] == []
    # The allocator's own answers, with every podCIDR of the input occupied.
    index = NodeCidrIndex()
    for name, cidr in [("a", "10.244.1.0/24"), ("b", "10.244.1.0/24"), ("d", "10.244.0.0/25"),
                       ("e", "10.244.2.0/24"), ("f", "10.244.3.0/24")]:
        index.set(name, [ip_network(cidr)])
    allocator = DualStackAllocator.from_index([ip_network("10.244.0.0/16")], index)
    assert proposed == [allocator.allocate()[0] for _ in proposed]
    inputs = [ip_network(c, strict=False) for c in ("10.244.1.0/24", "10.244.0.0/25", "10.244.2.1/24",
                                                    "10.244.3.0/24", "10.99.0.0/24")]
    assert len(set(proposed)) == len(proposed)
    assert not any(p.overlaps(i) for p in proposed for i in inputs)


def test_offline_unknown_cluster_cidr_asks_for_the_flag_not_a_server(capsys):
    assert main(["check", str(FIXTURES / "kube-flannel-cfg.yaml")]) == 0
    out = capsys.readouterr().out
    assert "give --cluster-cidr" in out and "start flannel-guard" not in out

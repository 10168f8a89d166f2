"""While flannel-guard is down the promise holds: played through kube-apiserver's admission chain.

Each test renders the install (``kubectl kustomize manifests/`` and ``helm template``), puts the
chain of tests/apiserver_chain.py in front of the loopback emulated API, and runs real replicas
behind the Service. Writes are sent as their writers send them (kubelet's POST, a merge patch
of spec.podCIDR(s), a ConfigMap replace) and the emulated API stores only what the chain admits.
After every phase: no podCIDR is stored on two nodes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from admission_policy import PolicySet
from apiserver_chain import Cluster, HookConfig, hook_configs, render
from test_manifests import KUBECTL, need_tool

NET_CONF = "net-conf.json"


def net_conf(network: str) -> dict[str, str]:
    return {NET_CONF: json.dumps({"Network": network, "Backend": {"Type": "vxlan"}})}


@pytest.fixture(scope="module", params=["kustomize", "helm"])
def hooks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[HookConfig]:
    need_tool(KUBECTL)
    need_tool(KUBECTL.parent / "helm")
    return hook_configs(render(request.param, tmp_path_factory.mktemp(request.param)))


@pytest.fixture(scope="module", params=["kustomize", "helm"])
def with_policy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The install with the admission-policy component (kustomize) or admissionPolicy.enabled (Helm)."""
    return render(request.param, tmp_path_factory.mktemp(request.param), admission_policy=True)


@contextlib.contextmanager
def running(hooks: list[HookConfig], tmp: Path, network: str = "10.244.0.0/16",
            policies: PolicySet | None = None) -> Iterator[Cluster]:
    """A cluster as flannel-guard finds it: node-a holds the range's second /24, flannel's Network
    matches the cluster-cidr; replicas run with the shipped --shutdown-delay (5 s)."""
    c = Cluster(hooks, tmp, cluster_cidr=network, args=("--shutdown-delay", "5"), policies=policies)
    second = str(list(ipaddress.ip_network(network).subnets(new_prefix=24))[1])
    c.thread.call(c.api.put_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
                                  "spec": {"podCIDR": second, "podCIDRs": [second]}}))
    c.thread.call(c.api.put_object("configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kube-flannel-cfg", "namespace": "kube-flannel"}, "data": net_conf(network)}))
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def cluster(hooks: list[HookConfig], tmp_path: Path) -> Iterator[Cluster]:
    with running(hooks, tmp_path) as c:
        yield c


def stored_network(c: Cluster) -> str:
    cm = c.api.objects[("configmaps", "kube-flannel", "kube-flannel-cfg")]
    return json.loads(cm["data"][NET_CONF])["Network"]


def test_the_shipped_configuration_has_the_fail_closed_podcidr_webhook(hooks: list[HookConfig]) -> None:
    policies = {h.name: h.hook.failure_policy for h in hooks}
    assert policies == {"nodes.mutate.flannel-guard.io": "Ignore", "configmaps.flannel-guard.io": "Fail",
                        "podcidrs.nodes.flannel-guard.io": "Fail", "nodes.flannel-guard.io": "Ignore"}
    assert [h.hook.mutating for h in hooks] == [True, False, False, False]  # mutating first


def test_all_replicas_killed_then_back(cluster: Cluster) -> None:
    c = cluster
    first = [c.start(), c.start()]
    # Up: a registration gets a podCIDR from the mutating webhook; a duplicate is refused in words.
    assert c.register("node-b").status_code == 201
    assert c.pod_cidrs()["node-b"]
    r = c.patch_pod_cidr("node-a", "10.244.9.0/24")
    assert r.status_code in (400, 403, 422)
    assert c.duplicates() == []

    # Every replica killed (a bad rollout, an expired certificate, the control plane rebooting).
    for url in first:
        c.kill(url)
    calls_before = len(c.chain.failed_calls)
    # kubelet still registers: the node is stored, without a podCIDR.
    assert c.register("node-c").status_code == 201
    assert c.register("node-d").status_code == 201
    assert c.pod_cidrs()["node-c"] == c.pod_cidrs()["node-d"] == []
    # A podCIDR that another node holds is not stored.
    r = c.patch_pod_cidr("node-c", "10.244.1.0/24")
    assert r.status_code == 500 and "failed calling webhook" in r.json()["message"]
    assert "podcidrs.nodes.flannel-guard.io" in r.json()["message"]
    # Nor a free one that nothing can check now: held back, it goes through when retried.
    held = c.register("node-e", "10.244.77.0/24")
    assert held.status_code == 500 and "node-e" not in c.api.nodes
    # Nor a flannel ConfigMap with another Network.
    r = c.put_configmap("kube-flannel", "kube-flannel-cfg", net_conf("10.99.0.0/16"))
    assert r.status_code == 500 and "configmaps.flannel-guard.io" in r.json()["message"]
    assert stored_network(c) == "10.244.0.0/16"
    assert c.pod_cidrs()["node-c"] == []
    assert len(c.chain.failed_calls) > calls_before
    assert c.duplicates() == []

    # The Service has no endpoint left: the same, decided without a connection attempt.
    c.wait_endpoints(lambda ready: not ready)
    assert c.patch_pod_cidr("node-d", "10.244.1.0/24").status_code == 500
    assert c.register("node-f").status_code == 201
    assert c.duplicates() == []

    # Replicas back: the held-back write goes through when retried; every node ends with a podCIDR
    # (the leader's assigning loop gives one to each node registered during the outage).
    c.start()
    c.start()
    assert c.register("node-e", "10.244.77.0/24").status_code == 201
    assert c.pod_cidrs()["node-e"] == ["10.244.77.0/24"]
    c.wait_stored(lambda: all((n.get("spec") or {}).get("podCIDRs") for n in c.api.nodes.values()))
    assert set(c.pod_cidrs()) == {"node-a", "node-b", "node-c", "node-d", "node-e", "node-f"}
    assert c.duplicates() == []
    # And with replicas up, the mismatched Network is refused by the webhook itself, in words.
    r = c.put_configmap("kube-flannel", "kube-flannel-cfg", net_conf("10.99.0.0/16"))
    assert r.status_code in (400, 403) and "denied the request" in r.json()["message"]
    assert stored_network(c) == "10.244.0.0/16"


def test_rolling_restart_under_a_stream_of_pod_cidr_writes(hooks: list[HookConfig], tmp_path: Path) -> None:
    # A /10: room for every registration of the stream, however fast this machine makes it.
    with running(hooks, tmp_path, "10.64.0.0/10") as c:
        roll(c)


def roll(c: Cluster) -> None:
    old = [c.start(), c.start()]
    stop = threading.Event()
    counter = itertools.count()
    statuses: list[int] = []

    def writer() -> None:
        # kubelet's registrations: each gets its podCIDR from /mutate and is then checked by the
        # fail-closed podCIDR webhook (the CREATE carries the patched podCIDR).
        while not stop.is_set():
            statuses.append(c.register(f"join-{next(counter):05d}").status_code)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        writers = [pool.submit(writer) for _ in range(2)]
        try:
            # The rollout: surge one new replica, wait until the Service routes to it, then SIGTERM
            # an old one (its /readyz turns false at once; it keeps serving through
            # --shutdown-delay while the endpoints follow), and wait until it has exited. Twice.
            for url in old:
                c.start()
                c.terminate(url)
        finally:
            stop.set()
        for w in writers:
            w.result()
    assert statuses and set(statuses) == {201}, sorted(set(statuses))
    assert c.chain.failed_calls == []
    assert c.chain.refused == []
    assert len(c.endpoints.ready) == 2 and not set(old) & set(c.endpoints.ready)
    joined = {n: cs for n, cs in c.pod_cidrs().items() if n.startswith("join-")}
    assert len(joined) == len(statuses) and all(joined.values())
    assert c.duplicates() == []



def test_with_every_webhook_configuration_deleted_the_policy_still_refuses(
        with_policy: list[dict], tmp_path: Path) -> None:
    """Break glass: the webhook configurations deleted, no replica running. The API server itself
    still refuses the stateless podCIDR errors, from the parameters the leader wrote; what needs
    state (another node's podCIDR) is no longer checked until the configurations are back."""
    policies = PolicySet.load([o for o in with_policy if "AdmissionPolicy" in o["kind"]])
    assert set(policies.policies) == {"flannel-guard-node-podcidrs", "flannel-guard-leases"}
    params = ("configmaps", "flannel-guard", "flannel-guard-policy-params")
    with running(hook_configs(with_policy), tmp_path, policies=policies) as c:
        url = c.start()
        c.wait_stored(lambda: params in c.api.objects)  # the elected replica wrote the parameters
        assert c.api.objects[params]["data"]["clusterCIDRs"] == "10.244.0.0/16"
        c.kill(url)
        # kubectl delete validatingwebhookconfiguration,mutatingwebhookconfiguration flannel-guard
        c.chain.hooks = []
        assert c.register("node-b").status_code == 201
        for wrong in ("10.99.0.0/24", "10.244.5.0/25"):
            r = c.patch_pod_cidr("node-b", wrong)
            assert r.status_code == 422, r.text
            assert "flannel-guard-node-podcidrs" in r.json()["message"]
        assert c.pod_cidrs()["node-b"] == []
        assert c.chain.calls == 0  # no webhook was in the loop
        r = c.patch_pod_cidr("node-b", "10.244.5.0/24")
        assert r.status_code == 200 and c.pod_cidrs()["node-b"] == ["10.244.5.0/24"]
        assert c.duplicates() == []

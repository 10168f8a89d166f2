"""The seed's cluster, fixed by the shipped install alone (../shared/seed/README.md).

``kubeadm init`` without ``--pod-network-cidr``: kube-controller-manager has no
``--cluster-cidr`` and does not allocate, kubeadm-config has no podSubnet,
kube-proxy no clusterCIDR; then ``kubectl apply -f kube-flannel.yml`` with its
stock Network. flannel-guard runs with the arguments the shipped manifests give it
(no ``--cluster-cidr``), two replicas, on the loopback API; the test plays the API
server (AdmissionReviews in, objects stored when admitted).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import ipaddress
import json
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import yaml
from conftest import node, review
from kube_emulator import (
    ApiThread,
    client_for,
    kcm_pod,
    kube_proxy_configmap,
    kubeadm_configmap,
    kubeconfig_file,
)
from kube_emulator import node as api_node
from server_process import serve

from webhook.doctor import diagnose, gather
from webhook.kube.leader import LEADER_LEASE

FIXTURE = Path(__file__).parent / "fixtures" / "kube-flannel-cfg.yaml"
FLANNEL = ipaddress.ip_network("10.244.0.0/16")
NS = "flannel-guard"


def wait_until(check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def flannel_cm() -> dict:
    return yaml.safe_load(FIXTURE.read_text())


def seed_api() -> ApiThread:
    api = ApiThread()
    api.call(api.api.put_object("pods", kcm_pod(cluster_cidr=None, allocate=False)))
    api.call(api.api.put_object("configmaps", kubeadm_configmap(pod_subnet=None)))
    api.call(api.api.put_object("configmaps", kube_proxy_configmap(None)))
    return api


@contextlib.contextmanager
def shipped_replicas(tmp: Path, api: ApiThread, count: int = 2, *extra: str) -> Iterator[list]:
    """Replicas started with the shipped manifests' arguments: no --cluster-cidr."""
    cfg = kubeconfig_file(tmp / "kubeconfig", api.api.url)
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve(tmp, "--kubeconfig", str(cfg), "--shutdown-delay", "0", *extra,
                                         cluster_cidr=None)) for _ in range(count)]


def client(ca: Path) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca)),
                             timeout=httpx.Timeout(120.0, pool=None))


def post(url: str, ca: Path, path: str, body: dict) -> dict:
    async def go() -> dict:
        async with client(ca) as c:
            r = await c.post(f"{url}{path}", json=body)
            assert r.status_code == 200, r.text
            return r.json()["response"]
    return asyncio.run(go())


def patched(obj: dict, resp: dict) -> dict:
    out = copy.deepcopy(obj)
    for op in json.loads(base64.b64decode(resp["patch"])):
        assert op["op"] == "add"
        if op["path"] == "/spec":
            out["spec"] = op["value"]
        else:
            out.setdefault("spec", {})[op["path"].rsplit("/", 1)[1]] = op["value"]
    return out


def test_the_seed_cluster_is_fixed_by_installing_flannel_guard(tmp_path: Path):
    api = seed_api()
    try:
        # A node that registered before any replica ran: no podCIDR (flannel: "pod cidr not assigned").
        api.call(api.api.put_node(api_node("early-worker")))
        with shipped_replicas(tmp_path, api) as replicas:
            ca = tmp_path / "ca.crt"
            one, two = replicas[0].url, replicas[1].url
            # kubectl apply -f kube-flannel.yml: admitted, saying whose Network becomes the cluster-cidr.
            cm = flannel_cm()
            resp = post(one, ca, "/validate", review(cm))
            assert resp["allowed"] is True, resp
            assert any("is the cluster-cidr" in w for w in resp.get("warnings", [])), resp
            api.call(api.api.put_object("configmaps", cm))

            # Three nodes join, through either replica: distinct podCIDRs inside flannel's Network.
            got = []
            for i, url in enumerate((one, two, one)):
                name = f"worker-{i}"

                def mutated(name: str = name, url: str = url) -> dict | None:
                    r = post(url, ca, "/mutate", review(node(name)))
                    return r if "patch" in r else None
                wait_until(mutated, f"{name} gets a podCIDR once the ConfigMap is seen", timeout=10)
                obj = patched(node(name), mutated())
                assert post(two if url == one else one, ca, "/validate", review(obj))["allowed"]
                api.call(api.api.put_node(api_node(name, *obj["spec"]["podCIDRs"])))
                got.append(ipaddress.ip_network(obj["spec"]["podCIDR"]))
            assert len(set(got)) == 3 and all(c.subnet_of(FLANNEL) and c.prefixlen == 24 for c in got)

            # The early node gets one from the assigning loop, with an Event saying so.
            def early() -> list[str]:
                return api.api.nodes["early-worker"]["spec"].get("podCIDRs") or []
            wait_until(early, "the loop assigns the node that registered while no replica ran")
            [cidr] = early()
            assert ipaddress.ip_network(cidr).subnet_of(FLANNEL)
            assert ipaddress.ip_network(cidr) not in got
            wait_until(lambda: any(e["reason"] == "PodCIDRAssigned" and e["involvedObject"]["name"]
                                   == "early-worker" for e in list(api.api.events.values())),
                       "a PodCIDRAssigned Event on the node")
            # doctor afterwards: healthy, apart from kube-controller-manager's missing flags.
            report = diagnose(asyncio.run(gather(client_for(api.api.url), timeout=5.0)))
            DOCTOR_CODES.extend(f"{f.severity.value}:{f.code}" for f in report.findings)
            DOCTOR_FIXES.extend(json.dumps(fix.to_json()) for fix in report.fixes)
        stored = [c for n in api.api.nodes.values() for c in n["spec"].get("podCIDRs") or []]
        assert len(stored) == len(set(stored)) == 4
        # Nothing about nodes, flannel or flannel-guard: only that no source names the cluster-cidr
        # (kube-controller-manager has no --cluster-cidr), with the flags that say so.
        assert [c for c in DOCTOR_CODES if not c.startswith("info:")] == ["error:NoClusterCIDR"], DOCTOR_CODES
        assert any("set-controller-manager-flags" in f and "10.244.0.0/16" in f
                   for f in DOCTOR_FIXES), DOCTOR_FIXES
    finally:
        api.close()


DOCTOR_CODES: list[str] = []
DOCTOR_FIXES: list[str] = []


def test_a_source_changed_while_serving_shows_within_seconds_and_the_allocator_follows(tmp_path: Path):
    api = seed_api()
    try:
        api.call(api.api.put_object("configmaps", kubeadm_configmap(pod_subnet="10.244.0.0/16")))
        with shipped_replicas(tmp_path, api, 1) as (replica,):
            ca = tmp_path / "ca.crt"
            first = post(replica.url, ca, "/mutate", review(node("before")))
            assert patched(node("before"), first)["spec"]["podCIDR"].startswith("10.244.")
            # kubeadm-config edited (kubeadm upgrade with a new podSubnet): a watch event, no restart.
            api.call(api.api.put_object("configmaps", kubeadm_configmap(pod_subnet="172.18.0.0/16")))

            def moved() -> bool:
                r = post(replica.url, ca, "/mutate", review(node(f"after-{time.monotonic_ns()}")))
                if "patch" not in r:
                    return False
                return json.loads(base64.b64decode(r["patch"]))[0]["value"].startswith("172.18.")
            wait_until(moved, "a new node gets a podCIDR from the new range", timeout=5)
            # The flannel ConfigMap with the old Network is now refused, naming the new value.
            resp = post(replica.url, ca, "/validate", review(flannel_cm()))
            assert resp["allowed"] is False and "172.18.0.0/16" in resp["status"]["message"]
            # The node outside the new range is reported, never reassigned.
            api.call(api.api.put_node(api_node("before", patched(node("before"), first)["spec"]["podCIDR"])))
            api.call(api.api.put_object("configmaps", kubeadm_configmap(pod_subnet="172.18.0.0/15")))

            def reported() -> bool:
                r = post(replica.url, ca, "/validate", review(flannel_cm()))
                return any("outside the cluster-cidr 172.18.0.0/15" in w for w in r.get("warnings", []))
            wait_until(reported, "nodes outside the new range reported", timeout=5)
        assert api.api.nodes["before"]["spec"]["podCIDR"].startswith("10.244.")
    finally:
        api.close()


def test_two_replicas_elect_one_leader_and_the_loop_moves_when_it_stops(tmp_path: Path):
    api = seed_api()
    try:
        api.call(api.api.put_object("configmaps", flannel_cm()))
        cfg = kubeconfig_file(tmp_path / "kubeconfig", api.api.url)
        args = ("--kubeconfig", str(cfg), "--leader-lease-duration", "3", "--shutdown-delay", "0")
        stacks = [contextlib.ExitStack(), contextlib.ExitStack()]
        with stacks[0], stacks[1]:
            procs = [stack.enter_context(serve(tmp_path, *args, cluster_cidr=None)) for stack in stacks]
            key = (NS, LEADER_LEASE)
            wait_until(lambda: key in api.api.leases, "a leader elected")
            api.call(api.api.put_node(api_node("orphan-1")))
            wait_until(lambda: api.api.nodes["orphan-1"]["spec"].get("podCIDRs"), "the leader assigns")
            leader = api.api.leases[key]["spec"]["holderIdentity"]

            def reporters() -> set[str]:
                return {e["reportingInstance"] for e in list(api.api.events.values())
                        if e["reason"] == "PodCIDRAssigned"}
            wait_until(reporters, "the assignment's Event")
            assert reporters() == {leader}  # one replica did the work: the one holding the Lease
            # Stop the leader: the other replica takes the Lease, and the loop with it.
            wait_until(lambda: any(f"leading: {leader} holds" in p.log.read_text(errors="replace")
                                   for p in procs), "the leader's log names it")
            at = next(i for i, p in enumerate(procs) if f"leading: {leader} holds" in p.log.read_text())
            stacks[at].close()
            wait_until(lambda: api.api.leases[key]["spec"]["holderIdentity"] != leader,
                       "the other replica takes over the Lease", timeout=60)
            api.call(api.api.put_node(api_node("orphan-2")))
            wait_until(lambda: api.api.nodes["orphan-2"]["spec"].get("podCIDRs"), "the new leader assigns",
                       timeout=60)
            successor = api.api.leases[key]["spec"]["holderIdentity"]
            wait_until(lambda: reporters() == {leader, successor}, "the successor's Event")
        a, b = (api.api.nodes[n]["spec"]["podCIDR"] for n in ("orphan-1", "orphan-2"))
        assert a != b
    finally:
        api.close()

"""Issue 28's attacks on the claims, each against a server process on the loopback API.

Without ``--client-ca`` anything that reaches the port can send reviews, and anything
allowed to create Leases in flannel-guard's namespace can plant one. Each test runs one
attack and, while it runs, lets a real node join as the API server would (``/mutate``,
``/validate`` of the patched Node, the Node stored): the node has a podCIDR within
seconds (from the patch, or from the assigning loop once it is stored) and no podCIDR is
stored twice. Waits are on outcomes (the stored Node, the Leases), with deadlines far
above what they take; the forged load runs in a thread until the outcome is seen.

``--reservation-grace 8`` makes the orphan age 4 s (``min(120, grace / 2)``) and the
reclaimer's interval 4 s, so that "released by age of acquisition, however often
renewed" is seen in seconds.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from conftest import node, review
from kube_emulator import ApiThread, kubeconfig_file
from kube_emulator import node as api_node
from server_process import ServerProcess, serve
from test_claims_replicas import wait_until

from webhook.core.cidr import parse_cidr_list
from webhook.core.claimpolicy import ClaimPolicy, lease_name, pending_cap
from webhook.core.constants import NAMESPACE

CLUSTER = "10.244.0.0/16"
# The cap of a /16 in /24s: min(64, 256 / 4).
CAP = pending_cap(ClaimPolicy(parse_cidr_list(CLUSTER)))
# A real node has its podCIDR within this (unloaded: well under a second).
JOIN_SECONDS = 20.0


@contextlib.contextmanager
def guarded(tmp: Path, *extra: str) -> Iterator[tuple[ApiThread, ServerProcess]]:
    api = ApiThread()
    try:
        cfg = kubeconfig_file(tmp / "kubeconfig", api.api.url)
        with serve(tmp, "--kubeconfig", str(cfg), "--reservation-grace", "8", *extra) as running:
            yield api, running
    finally:
        api.close()


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def patch_of(resp: dict) -> list[str]:
    """The podCIDRs a /mutate answer gives (none: admitted without)."""
    if "patch" not in resp:
        return []
    for op in json.loads(base64.b64decode(resp["patch"])):
        if op["path"] == "/spec/podCIDRs":
            return list(op["value"])
        if op["path"] == "/spec":
            return list(op["value"]["podCIDRs"])
    return []


def join(api: ApiThread, client: httpx.Client, name: str) -> list[str]:
    """A real node registers (the API server's chain) and is stored; its podCIDRs once it has them."""
    resp = client.post("/mutate", json=review(node(name))).json()["response"]
    assert resp["allowed"] is True, resp
    cidrs = patch_of(resp)
    checked = client.post("/validate", json=review(node(name, *cidrs))).json()["response"]
    assert checked["allowed"] is True, checked
    api.call(api.api.put_node(api_node(name, *cidrs)))
    wait_until(lambda: (api.api.nodes[name].get("spec") or {}).get("podCIDRs"),
               f"{name} has a podCIDR", timeout=JOIN_SECONDS)
    return api.api.nodes[name]["spec"]["podCIDRs"]


def no_duplicate(api: ApiThread) -> None:
    stored = Counter(c for n in list(api.api.nodes.values())
                     for c in (n.get("spec") or {}).get("podCIDRs") or [])
    assert stored and all(n == 1 for n in stored.values()), stored.most_common(3)


def confirmed(api: ApiThread) -> bool:
    """A bookmark to the node watch: the API confirms the index (the orphan rule waits for that)."""
    api.call(api.api.bookmark())
    return True


def held_by(api: ApiThread, prefix: str) -> list[dict]:
    return [lease for lease in api.api.claims().values()
            if str((lease.get("spec") or {}).get("holderIdentity", "")).startswith(prefix)]


class Flood:
    """``send(i)`` over and over in a thread, until stopped; counts what was sent."""

    def __init__(self, running: ServerProcess, body: Callable[[int], tuple[str, dict]]) -> None:
        self.sent = 0
        self.answers: list[dict] = []
        self._stop = threading.Event()
        self._client = running.client()
        self._body = body
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            path, body = self._body(i)
            resp = self._client.post(path, json=body).json()["response"]
            self.answers.append(resp)
            self.sent += 1
            i += 1

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_a_sustained_renewing_mutate_drain_holds_at_most_the_cap_and_real_nodes_join(tmp_path: Path):
    """Forged Node CREATEs to /mutate for more names than the cap, re-sent round and round (each
    re-send renews its claim): at most the cap is held; the claims are released by age of
    acquisition although renewed all along; real nodes joining meanwhile get a podCIDR."""
    names = CAP + 16
    with guarded(tmp_path) as (api, running):
        client = running.client()
        with Flood(running, lambda i: ("/mutate", review(node(f"forged-{i % names:03d}")))) as flood:
            wait_until(lambda: flood.sent >= 3 * names, "three rounds of the forged names")
            forged = held_by(api, "forged-")
            assert 0 < len(forged) <= CAP
            assert any("no podCIDR assigned" in w for a in flood.answers for w in a.get("warnings", []))
            first = {lease["metadata"]["uid"] for lease in forged}
            got = [join(api, client, f"real-{i}") for i in range(3)]
            # Renewed every round, yet released: none of the first claims survives its orphan age.
            wait_until(lambda: confirmed(api) and not first & {
                lease["metadata"]["uid"] for lease in held_by(api, "forged-")},
                       "the first forged claims released by age of acquisition", timeout=60)
            assert len(held_by(api, "forged-")) <= CAP
            got.append(join(api, client, "real-late"))
        assert all(got)
        no_duplicate(api)
        assert running.metric("flannel_guard_pending_claims_refused_total") > 0


def test_forged_validate_under_unknown_and_real_names_claims_at_most_the_cap(tmp_path: Path):
    """Forged /validate CREATEs carrying podCIDRs of the caller's choosing: under names never stored,
    and under a stored node's name (each with another /24). Beyond the cap they are judged without
    claiming and say so; the real name's extra claims are orphans; real nodes join meanwhile."""
    with guarded(tmp_path) as (api, running):
        api.call(api.api.put_node(api_node("node-0", "10.244.0.0/24")))
        client = running.client()
        wait_until(lambda: not client.post("/validate", json=review(node("probe", "10.244.0.0/24")))
                   .json()["response"]["allowed"], "node-0 indexed")

        def body(i: int) -> tuple[str, dict]:
            name = "node-0" if i % 2 else f"ghost-{i:03d}"
            return "/validate", review(node(name, f"10.244.{1 + i % 250}.0/24"))

        with Flood(running, body) as flood:
            wait_until(lambda: flood.sent >= 250, "a forged /validate for every other /24")
            assert len(api.api.claims()) <= CAP
            capped = [a for a in flood.answers
                      if any("judged without claiming" in w for w in a.get("warnings", []))]
            assert capped, "the cap was never reached"
            got = [join(api, client, f"real-{i}") for i in range(3)]
        assert all(got)
        # node-0 is stored with 10.244.0.0/24: its other claims are orphans, released by their age.
        wait_until(lambda: confirmed(api) and not held_by(api, "node-0"), "node-0's forged claims released",
                   timeout=60)
        no_duplicate(api)


def _lease(name: str, cidr: str, holder: str, renew: str) -> dict:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": NAMESPACE,
                         "labels": {"app.kubernetes.io/managed-by": "flannel-guard"},
                         "annotations": {"flannel-guard.io/cidr": cidr, "flannel-guard.io/node": holder}},
            "spec": {"holderIdentity": holder, "renewTime": renew, "acquireTime": renew,
                     "leaseDurationSeconds": 600}}


@pytest.mark.parametrize("planted", [
    # The issue's: the whole range, under a name that is no CIDR's, dated 2099.
    [("podcidr-v4-10-244-0-0-16", "10.244.0.0/16", "node-0", "2099-01-01T00:00:00.000000Z")],
    [("podcidr-everything", "10.244.1.0/24", "node-0", "2026-01-01T00:00:00.000000Z")],
    # Correctly named, but dated in the future: the first two candidates a node would get.
    [(lease_name(parse_cidr_list(c)[0]), c, "node-0", "2099-01-01T00:00:00.000000Z")
     for c in ("10.244.1.0/24", "10.244.2.0/24")],
], ids=["wrong-prefix-future", "wrong-name", "future-time"])
def test_a_planted_lease_is_not_a_claim(tmp_path: Path, planted: list[tuple[str, str, str, str]]):
    with guarded(tmp_path) as (api, running):
        api.call(api.api.put_node(api_node("node-0", "10.244.0.0/24")))
        leases = f"{api.api.url}/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
        for name, cidr, holder, when in planted:
            assert httpx.post(leases, json=_lease(name, cidr, holder, when), timeout=10).status_code == 201
        client = running.client()
        wait_until(lambda: running.metric("flannel_guard_claims_untrusted", client) >= 1,
                   "the planted Lease reported")
        got = [join(api, client, f"real-{i}") for i in range(3)]
        # It occupies nothing: the first node to join gets the first block after node-0's.
        assert got == [["10.244.1.0/24"], ["10.244.2.0/24"], ["10.244.3.0/24"]]
        no_duplicate(api)
        assert client.get("/readyz").status_code == 200
        assert "claim not trusted" in running.log.read_text()


def test_renewal_keeps_the_acquisition_time(tmp_path: Path):
    """A /mutate re-sent for the same (not stored) name renews its Lease: renewTime moves,
    acquireTime stays (what the orphan rule measures)."""
    with guarded(tmp_path, "--reservation-grace", "600") as (api, running):
        client = running.client()
        first = patch_of(client.post("/mutate", json=review(node("joining"))).json()["response"])
        key = (NAMESPACE, lease_name(parse_cidr_list(first[0])[0]))
        before = dict(api.api.leases[key]["spec"])
        wait_until(lambda: datetime.now(UTC).timestamp() - stamp(before["renewTime"]) > 0.01,
                   "the clock moves on")
        again = patch_of(client.post("/mutate", json=review(node("joining"))).json()["response"])
        assert again == first
        after = api.api.leases[key]["spec"]
        # Never later (it may be written as the API server's creationTimestamp, to the second).
        assert stamp(after["acquireTime"]) <= stamp(before["acquireTime"])
        assert stamp(after["renewTime"]) > stamp(before["renewTime"])


def test_an_exhausted_range_does_not_stop_the_loop_from_assigning_a_freed_block(tmp_path: Path):
    """Four blocks, four nodes, a fifth stored without a podCIDR: once a node leaves, the assigning
    loop gives its block to the fifth."""
    with guarded(tmp_path, "--cluster-cidr", "10.244.0.0/22") as (api, running):
        client = running.client()
        got = [join(api, client, f"real-{i}") for i in range(4)]
        late = client.post("/mutate", json=review(node("late"))).json()["response"]
        assert late["allowed"] is True and not patch_of(late)
        api.call(api.api.put_node(api_node("late")))
        api.call(api.api.delete_node("real-2"))
        wait_until(lambda: (api.api.nodes["late"].get("spec") or {}).get("podCIDRs"),
                   "the loop assigns the freed block", timeout=JOIN_SECONDS)
        assert api.api.nodes["late"]["spec"]["podCIDRs"] == got[2]
        no_duplicate(api)

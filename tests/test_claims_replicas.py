"""Never a duplicate podCIDR stored: two replicas, one loopback API, concurrent writers over HTTPS.

The test plays kube-apiserver: it sends each AdmissionReview to a replica and stores
the Node in the API when the answer admits it. Every write that sets a podCIDR
claims it (an exclusive Lease create) before it is admitted, on whichever replica.
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
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import node, review
from kube_emulator import ApiThread, FakeKubeApi, kubeconfig_file
from kube_emulator import node as api_node
from server_process import serve

from webhook.control.allocator import lease_name

N = ipaddress.ip_network


@contextlib.contextmanager
def two_replicas(tmp: Path, api: ApiThread, *extra: str) -> Iterator[list[str]]:
    cfg = kubeconfig_file(tmp / "kubeconfig", api.api.url)
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve(tmp, "--kubeconfig", str(cfg), "--cluster-cidr", "10.244.0.0/16",
                                         *extra)).url for _ in range(2)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiThread, list[str], Path]]:
    tmp = tmp_path_factory.mktemp("claims")
    api = ApiThread()
    try:
        with two_replicas(tmp, api) as urls:
            yield api, urls, tmp / "ca.crt"
    finally:
        api.close()


def client(ca: Path) -> httpx.AsyncClient:
    # No pool timeout, a long read timeout: a loaded machine only makes the run slower.
    return httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca)),
                             timeout=httpx.Timeout(120.0, pool=None), limits=httpx.Limits(max_connections=64))


async def send(c: httpx.AsyncClient, url: str, body: dict, path: str = "/validate") -> dict:
    r = await c.post(f"{url}{path}", json=body)
    assert r.status_code == 200, r.text
    resp = r.json()["response"]
    assert resp["uid"] == body["request"]["uid"]
    return resp


def set_cidr(name: str, cidr: str) -> dict:
    """The review of ``kubectl patch node NAME`` (or kube-controller-manager) setting a podCIDR."""
    return review(node(name, cidr), "UPDATE", old=node(name))


def stored_cidrs(api: ApiThread) -> list[str]:
    return [c for n in list(api.api.nodes.values()) for c in (n.get("spec") or {}).get("podCIDRs") or []]


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll a condition (a state the API reaches), with a deadline far above any expected wait."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def test_pairs_of_same_cidr_writes_on_two_replicas_admit_exactly_one_each(cluster):
    api, urls, ca = cluster
    pairs = 60

    async def scenario() -> list[tuple[dict, dict]]:
        async with client(ca) as c:
            async def pair(i: int) -> tuple[dict, dict]:
                cidr = f"10.244.{i}.0/24"
                a, b = await asyncio.gather(send(c, urls[0], set_cidr(f"pair-{i}-a", cidr)),
                                            send(c, urls[1], set_cidr(f"pair-{i}-b", cidr)))
                for name, resp in ((f"pair-{i}-a", a), (f"pair-{i}-b", b)):
                    if resp["allowed"]:
                        await api.acall(api.api.put_node(api_node(name, cidr)))
                return a, b
            return await asyncio.gather(*(pair(i) for i in range(pairs)))

    results = asyncio.run(scenario())
    for i, (a, b) in enumerate(results):
        assert [a["allowed"], b["allowed"]].count(True) == 1, (i, a, b)
        refused = b if a["allowed"] else a
        assert refused["status"]["reason"] == "PodCIDRClaimed"
        msg = refused["status"]["message"]
        winner = f"pair-{i}-a" if a["allowed"] else f"pair-{i}-b"
        assert f"held by node {winner}" in msg and "claimed since 20" in msg
        assert "kubectl patch node" in msg  # a free CIDR to use instead
    counts = Counter(stored_cidrs(api))
    assert all(n == 1 for n in counts.values()), counts.most_common(3)


def test_a_cidr_handed_out_by_mutate_is_refused_to_another_node_on_the_other_replica(cluster):
    _api, urls, ca = cluster

    async def scenario() -> list[tuple[str, dict]]:
        async with client(ca) as c:
            out = []
            for i in range(40):
                resp = await send(c, urls[0], review(node(f"joining-{i}")), "/mutate")
                ops = json.loads(base64.b64decode(resp["patch"]))
                cidr = next(o["value"] for o in ops if o["path"] == "/spec/podCIDR")
                # The joining Node is not stored yet; another node is patched to its CIDR elsewhere.
                out.append((cidr, await send(c, urls[1], set_cidr(f"intruder-{i}", cidr))))
            return out

    for cidr, resp in asyncio.run(scenario()):
        assert resp["allowed"] is False, cidr
        assert "joining-" in resp["status"]["message"]


def test_back_to_back_writes_on_one_replica_before_any_watch_event(cluster):
    _api, urls, ca = cluster

    async def scenario() -> tuple[list[dict], list[dict]]:
        async with client(ca) as c:
            firsts, seconds = [], []
            for i in range(20):
                cidr = f"10.244.{100 + i}.0/24"
                firsts.append(await send(c, urls[0], review(node(f"b2b-{i}-x", cidr))))
                seconds.append(await send(c, urls[0], review(node(f"b2b-{i}-y", cidr))))
            return firsts, seconds

    firsts, seconds = asyncio.run(scenario())
    assert all(r["allowed"] for r in firsts)
    assert not any(r["allowed"] for r in seconds)


def test_a_retried_write_of_the_same_node_is_admitted_on_either_replica(cluster):
    api, urls, ca = cluster
    body = review(node("retried", "10.244.130.0/24"))

    async def scenario() -> list[dict]:
        async with client(ca) as c:
            # The API server retries the same request after a timeout; maybe on the other replica.
            return [await send(c, url, copy.deepcopy(body)) for url in (urls[0], urls[1], urls[0], urls[1])]

    assert all(r["allowed"] for r in asyncio.run(scenario()))
    lease = api.api.leases[("flannel-guard", lease_name(N("10.244.130.0/24")))]
    assert lease["spec"]["holderIdentity"] == "retried"


def test_dry_run_is_refused_when_taken_admitted_when_free_and_writes_nothing(cluster):
    api, urls, ca = cluster

    async def scenario() -> tuple[dict, dict, int, int]:
        async with client(ca) as c:
            assert (await send(c, urls[0], review(node("dry-owner", "10.244.140.0/24"))))["allowed"]
            before = len(api.api.claims())
            taken = await send(c, urls[0], review(node("dry-other", "10.244.140.0/24"), dry_run=True))
            free = await send(c, urls[0], review(node("dry-other", "10.244.141.0/24"), dry_run=True))
            return taken, free, before, len(api.api.claims())

    taken, free, before, after = asyncio.run(scenario())
    assert taken["allowed"] is False and "dry-owner" in taken["status"]["message"]
    assert free["allowed"] is True
    assert after == before
    assert ("flannel-guard", lease_name(N("10.244.141.0/24"))) not in api.api.leases


def test_a_deleted_node_releases_its_claims_within_seconds(cluster):
    api, urls, ca = cluster
    cidr = "10.244.150.0/24"
    key = ("flannel-guard", lease_name(N(cidr)))

    async def write(name: str, url: str) -> dict:
        async with client(ca) as c:
            return await send(c, url, review(node(name, cidr)))

    assert asyncio.run(write("leaving", urls[0]))["allowed"]
    api.call(api.api.put_node(api_node("leaving", cidr)))
    assert key in api.api.leases
    api.call(api.api.delete_node("leaving"))
    wait_until(lambda: key not in api.api.leases, "the deleted node's claim released")
    # Free again, on the other replica too.
    assert asyncio.run(write("arriving", urls[1]))["allowed"]


@pytest.mark.parametrize("when", ["before", "after"])
def test_failing_lease_writes_store_no_duplicate_and_leave_no_claim_past_the_grace(tmp_path: Path, when: str):
    api = ApiThread(FakeKubeApi(keep_requests=False))
    try:
        with two_replicas(tmp_path, api, "--reservation-grace", "2") as urls:
            setattr(api.api, f"lease_fail_{when}", 1.0)

            async def phase_one() -> tuple[dict, dict, dict]:
                async with client(tmp_path / "ca.crt") as c:
                    failed = await send(c, urls[0], review(node("f-1", "10.244.7.0/24")))
                    mutated = await send(c, urls[1], review(node("f-2")), "/mutate")
                    other = await send(c, urls[1], review(node("f-3", "10.244.7.0/24")))
                    return failed, mutated, other

            failed, mutated, other = asyncio.run(phase_one())
            # A claim that cannot be written refuses the write (its writer retries) ...
            assert failed["allowed"] is False and failed["status"]["code"] == 503
            assert failed["status"]["reason"] == "ClaimUnavailable"
            assert other["allowed"] is False
            # ... while a joining node still registers, without a podCIDR (never blocked).
            assert mutated["allowed"] is True and "patch" not in mutated
            setattr(api.api, f"lease_fail_{when}", 0.0)

            async def phase_two() -> tuple[dict, dict]:
                async with client(tmp_path / "ca.crt") as c:
                    retry = await send(c, urls[1], review(node("f-1", "10.244.7.0/24")))
                    rival = await send(c, urls[0], review(node("f-4", "10.244.7.0/24")))
                    return retry, rival

            retry, rival = asyncio.run(phase_two())
            assert retry["allowed"] is True   # the same node's retry gets its claim (or makes it)
            assert rival["allowed"] is False  # and nobody else does
            # Claims whose Node never appeared are gone after the grace period.
            wait_until(lambda: not api.api.claims(), "every claim reclaimed after the grace period")
    finally:
        api.close()

"""Two webhook server processes, one emulated API on loopback: never the same podCIDR twice.

The API server may send any Node's admission to either replica; two nodes may join
in the same millisecond. Each replica reserves a CIDR as a Lease before it answers,
and the API's exclusive create decides between them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import itertools
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import node, review
from kube_emulator import ApiThread, kubeconfig_file
from kube_emulator import node as api_node
from server_process import serve
from test_claims_replicas import wait_until


@contextlib.contextmanager
def replicas(tmp: Path, api_url: str, *extra: str, count: int = 2) -> Iterator[list[str]]:
    """``count`` server processes on one loopback API, sharing one CA; yields their URLs once ready."""
    cfg = kubeconfig_file(tmp / "kubeconfig", api_url)
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve(tmp, "--kubeconfig", str(cfg), *extra)).url for _ in range(count)]


async def admit_all(urls: list[str], ca: Path, count: int, api: ApiThread | None = None) -> list[dict]:
    """``count`` concurrent joins; with ``api``, each admitted Node is then stored, as the API
    server does (with the patch's podCIDR, or without one)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    limits = httpx.Limits(max_connections=32)
    # No pool timeout: 500 requests queue for 32 connections as long as the machine needs.
    timeout = httpx.Timeout(120.0, pool=None)
    async with httpx.AsyncClient(verify=ctx, timeout=timeout, limits=limits) as client:
        async def one(i: int) -> dict:
            body = review(node(f"worker-{i:04d}"), "CREATE")
            r = await client.post(f"{urls[i % len(urls)]}/mutate", json=body)
            assert r.status_code == 200
            resp = r.json()["response"]
            assert resp["uid"] == body["request"]["uid"]
            if api is not None and resp["allowed"]:
                given = [str(c) for c in cidrs_of([resp])]
                await api.acall(api.api.put_node(api_node(f"worker-{i:04d}", *given)))
            return resp
        return await asyncio.gather(*(one(i) for i in range(count)))


def cidrs_of(responses: list[dict]) -> list[ipaddress.IPv4Network]:
    out = []
    for resp in responses:
        if resp["allowed"] and "patch" in resp:
            ops = json.loads(base64.b64decode(resp["patch"]))
            out.append(ipaddress.ip_network(next(o["value"] for o in ops if o["path"] == "/spec/podCIDR")))
    return out


@pytest.fixture
def api() -> Iterator[ApiThread]:
    server = ApiThread()
    try:
        yield server
    finally:
        server.close()


def stored(api: ApiThread) -> list[ipaddress.IPv4Network]:
    return [ipaddress.ip_network(c) for n in list(api.api.nodes.values())
            for c in (n.get("spec") or {}).get("podCIDRs") or []]


def test_500_concurrent_nodes_on_two_replicas_get_500_distinct_cidrs(tmp_path: Path, api: ApiThread):
    """500 joins at once, each stored as admitted: the first get their podCIDR from /mutate, those
    past the cap on claims for unstored nodes (64) from the assigning loop once stored; none twice."""
    with replicas(tmp_path, api.api.url, "--cluster-cidr", "10.244.0.0/14") as urls:
        responses = asyncio.run(admit_all(urls, tmp_path / "ca.crt", 500, api))
        assert all(r["allowed"] for r in responses)
        assert len(cidrs_of(responses)) >= 64
        wait_until(lambda: len(stored(api)) == 500, "every stored Node has a podCIDR", timeout=120)
    got = stored(api)
    assert len(got) == 500 and len(set(got)) == 500
    assert all(c.prefixlen == 24 and c.subnet_of(ipaddress.ip_network("10.244.0.0/14")) for c in got)
    ordered = sorted(got)
    assert all(not a.overlaps(b) for a, b in itertools.pairwise(ordered))
    assert len(api.api.claims()) == 500
    holders = {lease["spec"]["holderIdentity"] for lease in api.api.claims().values()}
    assert holders == {f"worker-{i:04d}" for i in range(500)}


def test_a_range_smaller_than_the_nodes_admits_the_rest_without_a_podcidr_and_doubles_none(
        tmp_path: Path, api: ApiThread):
    """As kube-controller-manager's range allocator (range_allocator.go: CIDRNotAvailable): the
    Node registers without a podCIDR instead of being kept out of the cluster."""
    # 10.244.0.0/24 with a /28 node mask holds 16 node CIDRs.
    with replicas(tmp_path, api.api.url, "--cluster-cidr", "10.244.0.0/24",
                  "--node-cidr-mask-size", "28") as urls:
        responses = asyncio.run(admit_all(urls, tmp_path / "ca.crt", 500, api))
        # Past the cap (4: a quarter of 16 blocks) or the range, admitted without; the loop fills the rest.
        wait_until(lambda: len(stored(api)) == 16, "the whole range on stored Nodes", timeout=120)
    without = [r for r in responses if r["allowed"] and "patch" not in r]
    assert all(r["allowed"] for r in responses)
    assert len(without) >= 484
    assert all(any("holds 16 node CIDR(s) of /28" in w or "no podCIDR assigned" in w for w in r["warnings"])
               for r in without)
    got = stored(api)
    assert len(got) == 16 and len(set(got)) == 16
    assert len(api.api.claims()) == 16

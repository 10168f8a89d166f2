"""The elected replica keeps the admission policy's parameter ConfigMap current (issue 22 point 3).

webhook/kube/policyparams.py against the loopback emulated API (tests/kube_emulator.py):
created when missing, left alone while current, replaced (conditionally on the
resourceVersion read) when discovery changes, recreated when deleted, never written while
the cluster-cidr is unknown or while another replica leads. Then what it wrote is what the
ValidatingAdmissionPolicy reads: the policy, evaluated as kube-apiserver does
(tests/admission_policy.py), refuses a podCIDR outside the written cluster-cidr.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from pathlib import Path
from typing import Any

import pytest
from admission_policy import PolicySet, evaluate, request_attrs
from kube_emulator import ApiThread, FakeKubeApi, client_for, kubeconfig_file
from server_process import serve

from webhook.control.state import ClusterState
from webhook.core.constants import NAMESPACE, NODE_POLICY, POLICY_PARAMS_CONFIGMAP
from webhook.core.policyparams import KEYS, params_agree, params_data, same_params
from webhook.kube.policyparams import PolicyParamsWriter

KEY = ("configmaps", NAMESPACE, POLICY_PARAMS_CONFIGMAP)
DUAL = (ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("fd00:10:244::/56"))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def state(cidr: tuple | None = DUAL, mask_v4: int = 24) -> ClusterState:
    return ClusterState(cluster_cidr=cidr, cidr_source="kube-controller-manager --cluster-cidr",
                        mask_v4=mask_v4, mask_v6=64)


def writes(api: FakeKubeApi) -> list[str]:
    return [r.method for r in api.requests if r.path.endswith("/configmaps") or
            r.path.endswith(f"/configmaps/{POLICY_PARAMS_CONFIGMAP}")]


def test_params_data_is_the_cluster_cidr_in_order_and_the_masks():
    data = params_data(DUAL, 24, 64, source="flag", observed_at="2026-12-06T20:00:00Z")
    assert data == {"clusterCIDRs": "10.244.0.0/16,fd00:10:244::/56", "nodeCIDRMaskSizeIPv4": "24",
                    "nodeCIDRMaskSizeIPv6": "64", "source": "flag", "observedAt": "2026-12-06T20:00:00Z"}
    assert tuple(data) == KEYS
    assert same_params(dict(data, observedAt="later"), data)
    assert not same_params(dict(data, nodeCIDRMaskSizeIPv4="25"), data)
    assert not same_params(None, data)
    with pytest.raises(ValueError):
        params_data((), 24, 64, source="nowhere", observed_at="x")
    # What doctor asks: the keys the policy reads, whatever the source says.
    assert params_agree(dict(data, source="another description"), DUAL, 24, 64)
    assert not params_agree(data, DUAL[::-1], 24, 64)  # the order is part of it
    assert not params_agree(data, DUAL, 26, 64)
    assert not params_agree({}, DUAL, 24, 64) and not params_agree(data, (), 24, 64)


def test_created_when_missing_then_left_alone_while_current():
    async def scenario() -> None:
        async with FakeKubeApi() as api:
            clock = iter([1_000_000_000.0, 1_000_000_100.0]).__next__
            writer = PolicyParamsWriter(client_for(api.url), NAMESPACE, state(), clock=clock)
            assert await writer.sync_once() == "created"
            stored = api.objects[KEY]
            assert stored["data"]["clusterCIDRs"] == "10.244.0.0/16,fd00:10:244::/56"
            assert stored["data"]["observedAt"] == "2001-09-09T01:46:40Z"
            assert stored["metadata"]["labels"] == {"app.kubernetes.io/part-of": "flannel-guard"}
            assert await writer.sync_once() == "current"
            assert writes(api) == ["GET", "POST", "GET"]  # the second pass reads and writes nothing
            assert api.objects[KEY]["data"]["observedAt"] == "2001-09-09T01:46:40Z"
    run(scenario())


def test_replaced_when_discovery_changes_and_recreated_when_deleted():
    async def scenario() -> None:
        async with FakeKubeApi() as api:
            st = state()
            writer = PolicyParamsWriter(client_for(api.url), NAMESPACE, st)
            assert await writer.sync_once() == "created"
            before = api.objects[KEY]["metadata"]["resourceVersion"]
            st.set_cidr((ipaddress.ip_network("172.18.0.0/16"),), "kubeadm-config podSubnet")
            st.mask_v4 = 26
            assert await writer.sync_once() == "replaced"
            data = api.objects[KEY]["data"]
            assert (data["clusterCIDRs"], data["nodeCIDRMaskSizeIPv4"], data["source"]) == (
                "172.18.0.0/16", "26", "kubeadm-config podSubnet")
            assert api.objects[KEY]["metadata"]["resourceVersion"] != before
            await api.delete_object(*KEY)
            assert await writer.sync_once() == "created"
            assert writer.writes == 3
    run(scenario())


def test_nothing_is_written_while_the_cluster_cidr_is_unknown():
    async def scenario() -> None:
        async with FakeKubeApi() as api:
            writer = PolicyParamsWriter(client_for(api.url), NAMESPACE, state(cidr=None))
            assert await writer.sync_once() == "unknown"
            assert writes(api) == [] and KEY not in api.objects
    run(scenario())


def test_a_refused_write_is_reported_not_raised():
    class NoCreate(FakeKubeApi):
        async def _create_namespaced(self, request: Any) -> Any:
            import aiohttp.web

            self._seen(request)
            return aiohttp.web.json_response(self._status(403, "Forbidden", "no RBAC"), status=403)

    async def scenario() -> None:
        async with NoCreate() as api:
            writer = PolicyParamsWriter(client_for(api.url), NAMESPACE, state())
            assert await writer.sync_once() == "failed"
            assert KEY not in api.objects and writer.writes == 0
    run(scenario())


def test_only_the_leader_writes_and_a_change_is_written_at_once():
    async def scenario() -> None:
        async with FakeKubeApi() as api:
            st = state()
            writer = PolicyParamsWriter(client_for(api.url), NAMESPACE, st, interval=3600, poll=0.01)
            leading = asyncio.Event()
            task = asyncio.create_task(writer.run(leading))
            try:
                # Not leading: the loop waits for the Lease and has made no request.
                await asyncio.wait_for(writer.parked.wait(), 10)
                assert writes(api) == [] and not writer.current.is_set()
                leading.set()
                await asyncio.wait_for(writer.current.wait(), 10)
                assert api.objects[KEY]["data"]["nodeCIDRMaskSizeIPv6"] == "64"
                # Discovery changes: the next poll writes it (the hourly re-read is far off).
                writer.current.clear()
                st.mask_v6 = 80
                await asyncio.wait_for(writer.current.wait(), 10)
                assert api.objects[KEY]["data"]["nodeCIDRMaskSizeIPv6"] == "80"
                # Leadership lost: nothing more is written, whatever changes.
                leading.clear()
                await asyncio.wait_for(writer.parked.wait(), 10)
                before = len(api.requests)
                st.mask_v6 = 96
                for _ in range(3):  # let the loop run if it could: it waits on the Lease
                    await asyncio.sleep(0)
                assert writer.parked.is_set() and len(api.requests) == before and writer.writes == 2
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    run(scenario())


def test_the_policy_reads_what_the_leader_wrote():
    """End to end: the ConfigMap as written is the ``params`` of flannel-guard-node-podcidrs."""
    async def scenario() -> dict[str, Any]:
        async with FakeKubeApi() as api:
            await PolicyParamsWriter(client_for(api.url), NAMESPACE, state()).sync_once()
            return api.objects[KEY]

    params = {(NAMESPACE, POLICY_PARAMS_CONFIGMAP): run(scenario())}
    policies = PolicySet.load()
    req = request_attrs("CREATE", group="", version="v1", resource="nodes", kind="Node", name="w")

    def verdict(*cidrs: str) -> bool:
        obj = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "w"},
               "spec": {"podCIDR": cidrs[0], "podCIDRs": list(cidrs)}}
        return evaluate(policies, NODE_POLICY, req, obj, None, params=params).allowed

    assert verdict("10.244.7.0/24", "fd00:10:244:7::/64")
    assert not verdict("10.99.7.0/24", "fd00:10:244:7::/64")    # outside
    assert not verdict("fd00:10:244:7::/64", "10.244.7.0/24")   # family order
    assert not verdict("10.244.7.0/25")                          # mask


def test_a_served_replica_writes_the_parameters_once_it_leads(tmp_path):
    """The wiring in ``serve``: a replica on the loopback API leads and writes the ConfigMap."""
    api = ApiThread()
    try:
        cfg = kubeconfig_file(Path(tmp_path) / "kubeconfig", api.api.url)
        with serve(tmp_path, "--kubeconfig", str(cfg), "--shutdown-delay", "0",
                   cluster_cidr="10.244.0.0/16,fd00:10:244::/56"):
            deadline = time.monotonic() + 30
            while KEY not in api.api.objects:  # a condition with a deadline, not a fixed sleep
                assert time.monotonic() < deadline, "the leader never wrote the parameters"
                time.sleep(0.02)
        data = api.api.objects[KEY]["data"]
        assert (data["clusterCIDRs"], data["nodeCIDRMaskSizeIPv4"], data["nodeCIDRMaskSizeIPv6"],
                data["source"]) == ("10.244.0.0/16,fd00:10:244::/56", "24", "64", "--cluster-cidr flag")
    finally:
        api.close()

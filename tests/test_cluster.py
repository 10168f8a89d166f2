"""Discovery and the node watcher against Kubernetes APIs served over HTTP on 127.0.0.1.

Discovery runs against kmock's KubernetesEmulator; the watcher against
:class:`kube_emulator.FakeKubeApi`, which has resourceVersions, 410 Gone,
dropped connections and downtime. Waits are polls with a deadline, never
fixed sleeps; nothing asserts on speed.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kube_emulator import (
    FakeKubeApi,
    client_for,
    kcm_pod,
    kmock_api,
    kmock_put,
    kube_proxy_configmap,
    kubeadm_configmap,
    kubeconfig_file,
    node,
)

from webhook.control.state import ClusterState
from webhook.core.discovery import Resolution, SourceKind
from webhook.core.resolve import resolution_from
from webhook.kube import cluster
from webhook.kube.cluster import api_client, apply_resolution, discover, staleness_note
from webhook.kube.watch import NodeWatcher

T = TypeVar("T")
V4 = ipaddress.ip_network("10.244.0.0/16")
SEED = ipaddress.ip_network("172.18.0.0/16")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a scenario; the servers, the watcher and its threads share one loop."""
    return asyncio.run(asyncio.wait_for(coro, 45))


async def until(check: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``check`` until it is truthy; fail with ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.01)


def net(text: str) -> Any:
    return ipaddress.ip_network(text)


def test_public_names_are_pinned() -> None:
    """The module exports exactly its documented API."""
    assert sorted(cluster.__all__) == sorted([
        "STALENESS_BOUND", "api_client", "apply_resolution", "discover", "staleness_note",
    ])


# --- discovery against kmock ---------------------------------------------------------------


async def _discover_kmock(objects: list[tuple[str, dict[str, Any]]], flag: str | None = None,
                          setup: Callable[[Any], None] | None = None) -> Resolution:
    async with kmock_api() as (emulator, url):
        for plural, obj in objects:
            kmock_put(emulator, plural, obj)
        if setup:
            setup(emulator)
        return await discover(client_for(url), flag, timeout=5.0)


@pytest.mark.parametrize(("objects", "flag", "kind", "effective"), [
    pytest.param([], "172.18.0.0/16", SourceKind.FLAG, (SEED,), id="flag-alone"),
    pytest.param([("pods", kcm_pod())], None, SourceKind.CONTROLLER_MANAGER, (V4,), id="kcm-alone"),
    pytest.param([("configmaps", kubeadm_configmap("v1beta3"))], None, SourceKind.KUBEADM, (V4,),
                 id="kubeadm-alone"),
    pytest.param([("configmaps", kube_proxy_configmap())], None, SourceKind.KUBE_PROXY, (V4,),
                 id="kube-proxy-alone"),
])
def test_discovery_finds_each_source_alone(
    objects: list[tuple[str, dict[str, Any]]], flag: str | None, kind: SourceKind, effective: tuple[Any, ...],
) -> None:
    """Any one source is enough; the missing ones are noted as absent, not as errors."""
    res = run(_discover_kmock(objects, flag))
    assert res.effective is not None and res.effective.kind is kind
    assert res.networks == effective
    assert not any("disagreement" in n for n in res.notes)


def test_discovery_with_all_sources_agreeing() -> None:
    """kcm pod, kubeadm-config (v1beta4) and kube-proxy as kubeadm writes them agree: no notes."""
    res = run(_discover_kmock([
        ("pods", kcm_pod()),
        ("configmaps", kubeadm_configmap("v1beta4")),
        ("configmaps", kube_proxy_configmap()),
    ]))
    assert res.effective is not None and res.effective.kind is SourceKind.CONTROLLER_MANAGER
    assert [s.kind for s in res.sources] == [SourceKind.CONTROLLER_MANAGER, SourceKind.KUBEADM,
                                             SourceKind.KUBE_PROXY]
    assert res.agree
    assert res.notes == ()
    assert res.allocate_node_cidrs is True
    assert res.service is not None and res.service.describe() == "10.96.0.0/12"


def test_discovery_reports_the_seed_disagreement() -> None:
    """kubeadm init without --pod-network-cidr, kcm edited to 172.18.0.0/16: loud notes, kcm wins."""
    res = run(_discover_kmock([
        ("pods", kcm_pod(cluster_cidr="172.18.0.0/16")),
        ("configmaps", kubeadm_configmap("v1beta3", pod_subnet=None)),
        ("configmaps", kube_proxy_configmap("10.244.0.0/16")),
    ]))
    assert res.networks == (SEED,)
    text = "\n".join(res.notes)
    assert "kubeadm-config has no podSubnet" in text
    assert ("cluster-cidr disagreement: 10.244.0.0/16 (kube-proxy config.conf clusterCIDR)"
            " vs 172.18.0.0/16") in text
    assert not res.agree


def test_discovery_with_no_source_says_so() -> None:
    """An empty kube-system: no effective value, each absent source noted, nothing raised."""
    res = run(_discover_kmock([]))
    assert res.effective is None and not res.flannel_defines
    text = "\n".join(res.notes + res.absent)
    assert "no cluster-cidr source answered" in text
    # serve also reads the flannel ConfigMaps: none yet, so the first one applied defines it.
    served = resolution_from(None, [], None, None, [])
    assert served.effective is None and served.flannel_defines
    assert "no flannel ConfigMap exists yet" in "\n".join(served.notes)
    assert "ConfigMap kube-system/kubeadm-config: not found (404)" in text
    assert "ConfigMap kube-system/kube-proxy: not found (404)" in text
    assert "no kube-controller-manager pod" in text


def test_discovery_treats_forbidden_as_absent_and_uses_the_rest() -> None:
    """A 403 on kubeadm-config is a note; the controller-manager still answers."""
    def forbid(emulator: Any) -> None:
        emulator["get /api/v1/namespaces/kube-system/configmaps/kubeadm-config"] << 403

    res = run(_discover_kmock([("pods", kcm_pod()), ("configmaps", kubeadm_configmap())], setup=forbid))
    assert res.networks == (V4,)
    assert any("kubeadm-config: not readable (403)" in n for n in res.notes + res.absent)


def test_discovery_ignores_pods_that_are_not_the_controller_manager() -> None:
    """kmock does not filter by labelSelector: other kube-system pods must not be read as kcm."""
    other = kcm_pod("etcd-cp1", cluster_cidr="10.1.0.0/16")
    other["metadata"]["labels"] = {"component": "etcd"}
    res = run(_discover_kmock([("pods", other), ("pods", kcm_pod())]))
    assert res.networks == (V4,)
    assert len(res.sources) == 1


def test_discovery_reads_every_controller_manager_replica() -> None:
    """Three control-plane nodes whose kcm flags differ: each is a source, the difference a note."""
    res = run(_discover_kmock([
        ("pods", kcm_pod("kube-controller-manager-cp1")),
        ("pods", kcm_pod("kube-controller-manager-cp2")),
        ("pods", kcm_pod("kube-controller-manager-cp3", cluster_cidr="10.245.0.0/16")),
    ]))
    assert len(res.sources) == 3
    assert any("disagreement: 10.245.0.0/16" in n and "cp3" in n for n in res.notes)


def test_discovery_through_a_kubeconfig_file(tmp_path: Path) -> None:
    """api_client() reads a kubeconfig; discovery works through it."""
    async def scenario() -> Resolution:
        async with kmock_api() as (emulator, url):
            kmock_put(emulator, "configmaps", kube_proxy_configmap())
            cfg = tmp_path / "kubeconfig"
            cfg.write_text(
                "apiVersion: v1\nkind: Config\ncurrent-context: t\n"
                f"clusters:\n- name: t\n  cluster:\n    server: {url}\n"
                "contexts:\n- name: t\n  context:\n    cluster: t\n    user: t\n"
                "users:\n- name: t\n  user:\n    token: x\n")
            return await discover(api_client(cfg, in_cluster=False))

    assert run(scenario()).networks == (V4,)


def test_discovery_against_a_server_that_filters_labels() -> None:
    """The same discovery against the watch-capable fake (which honours labelSelector)."""
    async def scenario() -> Resolution:
        async with FakeKubeApi() as api:
            for obj in (kcm_pod(cluster_cidr="10.244.0.0/16,fd00:10:244::/56"),
                        kubeadm_configmap("v1beta2", "10.244.0.0/16,fd00:10:244::/56")):
                plural = "pods" if obj["kind"] == "Pod" else "configmaps"
                api.objects[plural, "kube-system", obj["metadata"]["name"]] = obj
            res = await discover(client_for(api.url))
            assert any(r.query.get("labelSelector") == "component=kube-controller-manager"
                       for r in api.requests)
            return res

    res = run(scenario())
    assert res.networks == (V4, net("fd00:10:244::/56"))
    assert res.agree
    assert any("kube-proxy: not found (404)" in n for n in res.notes + res.absent)


def test_discovery_with_the_api_down_returns_notes_not_errors() -> None:
    """Nothing listening: every source is 'unreachable', the flag still wins, nothing hangs."""
    async def scenario() -> Resolution:
        api = FakeKubeApi()
        await api.up()
        await api.down()  # the port is known and closed now
        return await discover(client_for(api.url), "10.244.0.0/16", timeout=2.0)

    res = run(scenario())
    assert res.networks == (V4,)
    # the controller-manager pods, kubeadm-config, kube-proxy and the two server Node lists
    assert sum("unreachable" in n for n in res.notes + res.absent) == 5


def test_apply_resolution_sets_the_serving_state() -> None:
    """The effective cluster-cidr, its origin, masks and notes go into ClusterState."""
    res = run(_discover_kmock([("pods", kcm_pod(extra=("--node-cidr-mask-size=25",)))]))
    state = ClusterState(cluster_cidr=None, cidr_source="none")
    apply_resolution(state, res)
    assert state.cluster_cidr == (V4,)
    assert state.cidr_source.startswith("kube-controller-manager pod kube-system/")
    assert (state.mask_v4, state.mask_v6) == (25, 25)
    assert state.view().cluster_cidr == (V4,)
    assert not state.disputed


def test_apply_resolution_marks_disagreeing_sources_as_disputed() -> None:
    """Sources with different values make the state disputed, with the notes carried along."""
    res = run(_discover_kmock([("pods", kcm_pod(cluster_cidr="172.18.0.0/16")),
                               ("configmaps", kube_proxy_configmap("10.244.0.0/16"))]))
    state = ClusterState(cluster_cidr=None, cidr_source="none")
    apply_resolution(state, res)
    assert state.cluster_cidr == (SEED,)
    assert state.disputed and state.view().disputed
    assert any("disagreement" in n for n in state.view().notes)


# --- the node watcher -----------------------------------------------------------------------


def _watcher(api: FakeKubeApi, state: ClusterState, **kw: Any) -> NodeWatcher:
    options: dict[str, Any] = {"timeout_seconds": 5, "request_timeout": 2.0, "backoff_initial": 0.05,
                               "backoff_max": 0.2, "jitter": lambda: 0.0}
    options.update(kw)
    return NodeWatcher(client_for(api.url), state, **options)


async def _with_watcher(
    scenario: Callable[[FakeKubeApi, ClusterState, NodeWatcher], Awaitable[None]],
    *, gone_as_http: bool = False, nodes: tuple[dict[str, Any], ...] = (), **kw: Any,
) -> NodeWatcher:
    async with FakeKubeApi(gone_as_http=gone_as_http) as api:
        for n in nodes:
            await api.put_node(n)
        state = ClusterState(cluster_cidr=(V4,), cidr_source="test")
        watcher = _watcher(api, state, **kw)
        task = asyncio.create_task(watcher.run())
        try:
            await scenario(api, state, watcher)
        finally:
            watcher.stop()
            await asyncio.wait_for(task, 10)
        return watcher


def _owner(state: ClusterState, cidr: str) -> list[str]:
    return [name for name, _ in state.index.overlapping(net(cidr))]


def test_watch_follows_adds_changes_and_deletes() -> None:
    """The list fills the index; ADDED, MODIFIED and DELETED keep it current; a delete frees the CIDR."""
    async def scenario(api: FakeKubeApi, state: ClusterState, watcher: NodeWatcher) -> None:
        await until(lambda: state.ready, what="first list")
        assert dict(state.index.nodes()) == {"cp1": (net("10.244.0.0/24"),)}
        await until(lambda: api.open_streams() == 1, what="watch open")

        await api.put_node(node("worker-0001"))  # registers without a podCIDR: not indexed
        await api.put_node(node("worker-0002", "10.244.2.0/24"))
        await until(lambda: "worker-0002" in state.index, what="ADDED")
        assert "worker-0001" not in state.index

        await api.put_node(node("worker-0001", "10.244.1.0/24"))  # podCIDR assigned later
        await until(lambda: _owner(state, "10.244.1.0/24") == ["worker-0001"], what="MODIFIED")

        await api.delete_node("worker-0002")
        await until(lambda: "worker-0002" not in state.index, what="DELETED")
        assert _owner(state, "10.244.2.0/24") == []
        assert state.index.first_free(V4, 24) == net("10.244.2.0/24")
        assert watcher.resource_version == str(api._rv)
        assert len(api.lists()) == 1

    run(_with_watcher(scenario, nodes=(node("cp1", "10.244.0.0/24"),)))


def test_the_list_and_watch_keep_only_names_and_cidrs() -> None:
    """Dual-stack podCIDRs are indexed per node; unparsable ones are skipped, not fatal."""
    async def scenario(api: FakeKubeApi, state: ClusterState, watcher: NodeWatcher) -> None:
        await until(lambda: state.ready)
        assert state.index.cidrs_of("a") == (net("10.244.0.0/24"), net("fd00:10:244::/64"))
        assert state.index.cidrs_of("b") == ()
        assert len(state.index) == 1

    run(_with_watcher(scenario, nodes=(node("a", "10.244.0.0/24", "fd00:10:244::/64"),
                                       node("b", "not-a-cidr"))))


def test_bookmarks_advance_the_resource_version_and_the_sync_time() -> None:
    """A BOOKMARK moves the resourceVersion on and counts as a confirmation from the API."""
    async def scenario(api: FakeKubeApi, state: ClusterState, watcher: NodeWatcher) -> None:
        await until(lambda: api.open_streams() == 1)
        await api.put_node(node("n1", "10.244.1.0/24"))
        await until(lambda: "n1" in state.index)
        before = state.last_sync
        api._rv += 5  # other resources changed: the bookmark carries a newer resourceVersion
        await api.bookmark()
        await until(lambda: watcher.resource_version == str(api._rv), what="bookmark")
        assert state.last_sync is not None and before is not None and state.last_sync >= before
        assert api.watches()[0].query.get("allowWatchBookmarks") == "true"

    run(_with_watcher(scenario))


@pytest.mark.parametrize("gone_as_http", [False, True], ids=["error-event", "http-410"])
def test_410_gone_relists_and_recovers(gone_as_http: bool) -> None:
    """An expired resourceVersion (ERROR 410 event, or HTTP 410) makes the watcher relist, then watch on."""
    async def scenario(api: FakeKubeApi, state: ClusterState, watcher: NodeWatcher) -> None:
        await until(lambda: api.open_streams() == 1)
        old_rv = watcher.resource_version
        # Changes the watcher will only learn from the relist: made, then compacted away.
        api.nodes["gone-node"] = node("gone-node", "10.244.9.0/24", rv="1")
        await api.delete_node("n1")
        await api.expire()
        await until(lambda: len(api.lists()) == 2, what="relist")
        await until(lambda: "gone-node" in state.index and "n1" not in state.index, what="relisted index")
        assert watcher.resource_version != old_rv
        # ...and the new watch works.
        await until(lambda: api.open_streams() == 1, what="new watch")
        await api.put_node(node("n2", "10.244.2.0/24"))
        await until(lambda: "n2" in state.index, what="event after relist")
        assert watcher.failures == (1 if gone_as_http else 0)  # HTTP 410 is an ApiException

    run(_with_watcher(scenario, gone_as_http=gone_as_http, nodes=(node("n1", "10.244.1.0/24"),)))


def test_a_dropped_connection_resumes_from_the_last_resource_version() -> None:
    """A connection cut mid-stream backs off and rewatches from where it was: no relist, no lost event."""
    async def scenario(api: FakeKubeApi, state: ClusterState, watcher: NodeWatcher) -> None:
        await until(lambda: api.open_streams() == 1)
        await api.put_node(node("n1", "10.244.1.0/24"))
        await until(lambda: "n1" in state.index)
        rv = watcher.resource_version
        api.drop_watches()
        await api.put_node(node("n2", "10.244.2.0/24"))  # while the watcher is disconnected
        await until(lambda: "n2" in state.index, what="event made during the drop")
        assert watcher.failures >= 1
        assert len(api.lists()) == 1
        assert any(w.query.get("resourceVersion") == rv for w in api.watches()[1:])

    run(_with_watcher(scenario))


def test_a_watch_ended_by_the_server_is_simply_renewed() -> None:
    """timeoutSeconds ends a watch cleanly: a new one starts from the same resourceVersion."""
    async def scenario(api: FakeKubeApi, state: ClusterState, watcher: NodeWatcher) -> None:
        await until(lambda: len(api.watches()) >= 3, what="renewed watches")
        assert all(w.query.get("timeoutSeconds") == "1" for w in api.watches())
        assert watcher.failures == 0 and len(api.lists()) == 1
        await api.put_node(node("n1", "10.244.1.0/24"))
        await until(lambda: "n1" in state.index)

    run(_with_watcher(scenario, timeout_seconds=1))


def test_the_api_going_away_and_coming_back() -> None:
    """While the API is down the index keeps serving and /readyz stays true; it catches up afterwards."""
    async def scenario(api: FakeKubeApi, state: ClusterState, watcher: NodeWatcher) -> None:
        await until(lambda: api.open_streams() == 1)
        synced = state.last_sync
        assert synced is not None
        await api.down()
        await until(lambda: watcher.consecutive_failures >= 2, what="failures while down")
        # Still serving the last known picture, still ready.
        assert state.ready
        assert state.index.cidrs_of("n1") == (net("10.244.1.0/24"),)
        assert state.last_sync == synced
        # Staleness, on an injected clock.
        assert staleness_note(state, now=synced + 10) is None
        note = staleness_note(state, now=synced + 301)
        assert note is not None and "301s" in note and len(note) < 200
        assert staleness_note(state, now=synced + 301, bound=600) is None
        # The cluster changes while the API is unreachable to us, then it comes back.
        await api.delete_node("n1")
        await api.put_node(node("n2", "10.244.2.0/24"))
        await api.up()
        await until(lambda: "n2" in state.index and "n1" not in state.index, what="caught up")
        assert state.last_sync is not None and state.last_sync > synced
        assert staleness_note(state, now=state.last_sync + 1) is None
        await until(lambda: watcher.consecutive_failures == 0)

    run(_with_watcher(scenario, nodes=(node("n1", "10.244.1.0/24"),)))


def test_not_ready_until_the_first_list() -> None:
    """With the API away from the start: not ready, not stale; the first list makes it ready."""
    async def scenario() -> None:
        api = FakeKubeApi()
        await api.up()
        await api.put_node(node("n1", "10.244.1.0/24"))
        await api.down()
        state = ClusterState(cluster_cidr=(V4,), cidr_source="test")
        watcher = _watcher(api, state)
        task = asyncio.create_task(watcher.run())
        try:
            await until(lambda: watcher.failures >= 2)
            assert not state.ready and state.last_sync is None
            assert staleness_note(state, now=1e12) is None
            await api.up()
            await until(lambda: state.ready, what="ready after first list")
            assert "n1" in state.index
        finally:
            watcher.stop()
            await asyncio.wait_for(task, 10)
            await api.down()

    run(scenario())


def test_run_with_max_cycles_returns_by_itself() -> None:
    """The bounded-iterations hook: run(max_cycles=2) lists, watches twice and returns."""
    async def scenario() -> None:
        async with FakeKubeApi() as api:
            await api.put_node(node("n1", "10.244.1.0/24"))
            state = ClusterState(cluster_cidr=(V4,), cidr_source="test")
            watcher = _watcher(api, state, timeout_seconds=1)
            await asyncio.wait_for(watcher.run(max_cycles=2), 15)
            assert watcher.cycles == 2
            assert len(api.lists()) == 1 and len(api.watches()) == 2
            assert state.ready and "n1" in state.index

    run(scenario())


def test_stop_interrupts_a_long_watch() -> None:
    """stop() ends run() even while a watch with a long timeout is being read."""
    async def scenario() -> None:
        async with FakeKubeApi() as api:
            state = ClusterState(cluster_cidr=(V4,), cidr_source="test")
            watcher = _watcher(api, state, timeout_seconds=600)
            task = asyncio.create_task(watcher.run())
            await until(lambda: api.open_streams() == 1)
            watcher.stop()
            await asyncio.wait_for(task, 10)
            assert watcher.failures == 0

    run(scenario())


@pytest.mark.parametrize(("failures", "want"), [(1, 0.05), (2, 0.1), (3, 0.2), (10, 0.2)])
def test_backoff_is_exponential_and_capped(failures: int, want: float) -> None:
    """With zero jitter the delay doubles per failure up to the cap; jitter scales it into [0.5, 1)."""
    api = FakeKubeApi()
    watcher = _watcher(api, ClusterState(cluster_cidr=None, cidr_source="none"))
    assert watcher._delay(failures) == pytest.approx(want * 0.5)
    jittery = _watcher(api, ClusterState(cluster_cidr=None, cidr_source="none"), jitter=lambda: 0.999)
    assert want * 0.5 <= jittery._delay(failures) < want


def test_repeated_410_backs_off_instead_of_spinning() -> None:
    """A watch that answers 410 right after every relist is retried with backoff, not in a tight loop."""
    async def scenario(api: FakeKubeApi, state: ClusterState, watcher: NodeWatcher) -> None:
        await until(lambda: api.open_streams() == 1)
        await api.expire()
        api._compacted = 10**9  # every resourceVersion is too old from now on
        await until(lambda: len(api.lists()) >= 4, what="relists")
        assert state.ready  # still serving the last list
        assert watcher._gone_streak >= 2

    run(_with_watcher(scenario, backoff_initial=0.01, backoff_max=0.05))


def test_the_client_does_not_read_the_proxy_environment_before_every_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kube_config's token-refresh hook re-applies the config before each request; the client's
    host setter then re-read every environment variable (urllib's getproxies), ~0.4 ms a call."""
    import kubernetes.client.configuration

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    api = api_client(kubeconfig_file(tmp_path / "kubeconfig", "https://127.0.0.1:6443"), False)
    assert api.configuration.proxy == "http://proxy.invalid:3128"  # resolved once, at load
    calls: list[int] = []
    monkeypatch.setattr(kubernetes.client.configuration, "getproxies", lambda: calls.append(1) or {})
    hook = api.configuration.refresh_api_key_hook
    assert hook is not None
    hook(api.configuration)  # what the client runs before each request
    assert calls == []
    assert api.configuration.proxy == "http://proxy.invalid:3128"


def test_the_server_loads_only_the_kubernetes_subpackages_it_uses() -> None:
    """webhook/kube/__init__.py: kubernetes' eager __init__ (dynamic, stream, informer, watch) is skipped."""
    import subprocess
    import sys

    code = ("import sys, webhook.service.server, webhook.kube.leader, webhook.kube.cluster;"
            " from kubernetes.client import ApiClient, Configuration;"
            " ApiClient(Configuration()).close();"
            " from kubernetes import __version__; assert __version__.count('.') == 2, __version__;"
            " print(' '.join(sorted(m for m in sys.modules"
            " if m.startswith('kubernetes.') and m.count('.') == 1)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120).stdout.split()
    assert out == ["kubernetes.client", "kubernetes.config", "kubernetes.leaderelection", "kubernetes.utils"]
    # Imported first, the package is the whole one: nothing is replaced under a running program.
    code = "import kubernetes, webhook.kube, sys; print(sys.modules['kubernetes'].__version__)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


def test_the_outside_note_offers_setting_the_range_back_before_moving_nodes() -> None:
    # Issue 24: when the cluster-cidr changed by mistake the nodes are right; the note on every
    # response must not send the operator to drain healthy nodes first.
    from webhook.core.cidr import parse_cidr_list
    from webhook.core.nodeindex import NodeCidrIndex

    index = NodeCidrIndex()
    index.set("n1", parse_cidr_list("10.244.1.0/24"))
    index.set("n2", parse_cidr_list("172.18.1.0/24"))
    state = ClusterState(cluster_cidr=parse_cidr_list("172.18.0.0/16"), cidr_source="test", index=index)
    note = state.outside_note()
    assert note is not None and note.startswith("1 node podCIDR(s) outside the cluster-cidr 172.18.0.0/16")
    assert "n1 (10.244.1.0/24)" in note
    assert note.index("set it back") < note.index("drain and re-register")
    state.cluster_cidr = parse_cidr_list("0.0.0.0/0")
    assert state.outside_note() is None


def test_the_emulated_api_filters_node_lists_and_watches_by_label_selector() -> None:
    # As the API server does: the k3s/RKE2 server watch (node-role.kubernetes.io/control-plane)
    # must not hear every joining Node.
    import httpx
    from kube_emulator import ApiThread

    api = ApiThread()
    try:
        server = {"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": "cp", "labels": {"node-role.kubernetes.io/control-plane": "true"}}, "spec": {}}
        api.call(api.api.put_node(server))
        worker = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "w"}, "spec": {}}
        api.call(api.api.put_node(worker))
        base = f"{api.api.url}/api/v1/nodes"

        def names(selector: str) -> list[str]:
            got = httpx.get(base, params={"labelSelector": selector}, timeout=10).json()
            return [n["metadata"]["name"] for n in got["items"]]

        assert names("node-role.kubernetes.io/control-plane") == ["cp"]
        assert names("!node-role.kubernetes.io/control-plane") == ["w"]
        assert names("node-role.kubernetes.io/control-plane=true") == ["cp"]
        assert names("") == ["cp", "w"]
        with httpx.stream("GET", base, params={"watch": "true", "timeoutSeconds": "1",
                                               "labelSelector": "node-role.kubernetes.io/control-plane"},
                          timeout=10) as r:
            events = [line for line in r.iter_lines() if line]
        assert len(events) == 1 and '"cp"' in events[0]
    finally:
        api.close()

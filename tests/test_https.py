"""AdmissionReviews over real HTTPS on 127.0.0.1, shaped as kube-apiserver sends them.

The client verifies the server's certificate against the generated CA with the
Service's DNS name (flannel-guard.flannel-guard.svc), as the API server does.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import FIXTURES, node, review, served_in_thread
from kube_emulator import free_port

from webhook.control.allocator import Allocator, MemoryStore
from webhook.control.settings import Settings
from webhook.control.state import ClusterState
from webhook.core.constants import NAMESPACE, SERVICE
from webhook.core.rules import Mode
from webhook.service import certs
from webhook.service.server import build_server

SVC_DNS = f"{SERVICE}.{NAMESPACE}.svc"


class Running:
    def __init__(self, url: str, ca: Path, state: ClusterState) -> None:
        self.url, self.ca, self.state = url, ca, state

    def client(self) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        return httpx.Client(base_url=self.url, verify=ctx, timeout=10)

    def post(self, client: httpx.Client, path: str, body: object, **kw: object) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}  # type: ignore[dict-item]
        return client.post(path, content=content, headers=headers,
                           extensions={"sni_hostname": SVC_DNS}, **kw)  # type: ignore[arg-type]


def start(tmp: Path, cidr: str | None, mode: Mode = Mode.ENFORCE, *, fix: bool = False,
          store: MemoryStore | None = None, **overrides: object) -> Iterator[Running]:
    bundle = certs.generate(SERVICE, NAMESPACE, days=1)
    certs.write_bundle(bundle, tmp)
    port = free_port()
    settings = Settings(host="127.0.0.1", port=port, tls_cert=tmp / "tls.crt", tls_key=tmp / "tls.key",
                        mode=mode, standalone=True, cluster_cidr=Settings.parse_cluster_cidr(cidr),
                        fix_network=fix, **overrides)  # type: ignore[arg-type]
    state = ClusterState(cluster_cidr=settings.cluster_cidr, cidr_source="--cluster-cidr")
    state.mark_synced()
    allocator = None
    if settings.cluster_cidr:
        allocator = Allocator(settings.cluster_cidr, index=state.index, store=store or MemoryStore())
    server, _ = build_server(settings, state, allocator)
    with served_in_thread(server):
        yield Running(f"https://127.0.0.1:{port}", tmp / "ca.crt", state)


@pytest.fixture
def seed_server(tmp_path: Path) -> Iterator[Running]:
    """The seed's cluster: kubeadm --pod-network-cidr 172.18.0.0/16."""
    yield from start(tmp_path, "172.18.0.0/16")


@pytest.fixture
def default_server(tmp_path: Path) -> Iterator[Running]:
    yield from start(tmp_path, "10.244.0.0/16")


def stored(obj: dict, rv: str = "1001") -> dict:
    """The object as the API server hands it to webhooks: uid, resourceVersion, managedFields..."""
    out = copy.deepcopy(obj)
    meta = out.setdefault("metadata", {})
    meta.update({"uid": "8f6c1a1e-52b2-4c0b-9d2a-3c1d3f2b0e11", "resourceVersion": rv,
                 "creationTimestamp": "2026-11-27T05:00:00Z",
                 "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update",
                                    "apiVersion": "v1", "time": "2026-11-27T05:00:00Z",
                                    "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}}}]})
    meta.setdefault("annotations", {})["kubectl.kubernetes.io/last-applied-configuration"] = (
        json.dumps(obj))
    return out


def configmap() -> dict:
    return yaml.safe_load((FIXTURES / "kube-flannel-cfg.yaml").read_text())


def test_tls_verifies_against_the_ca_with_the_service_name(default_server: Running):
    with default_server.client() as c:
        r = c.get("/healthz", extensions={"sni_hostname": SVC_DNS})
        assert r.status_code == 200
    bad_ctx = ssl.create_default_context()  # system CAs: must not trust our self-signed CA
    with httpx.Client(base_url=default_server.url, verify=bad_ctx) as c, pytest.raises(httpx.ConnectError):
        c.get("/healthz", extensions={"sni_hostname": SVC_DNS})


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_1_1_is_refused(default_server: Running):
    ctx = ssl.create_default_context(cafile=str(default_server.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    port = int(default_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock, pytest.raises(ssl.SSLError):
        ctx.wrap_socket(sock, server_hostname=SVC_DNS)


def test_kubectl_apply_kube_flannel_yml_create_then_update_in_the_seed_cluster(seed_server: Running):
    cm = configmap()
    with seed_server.client() as c:
        # kubectl apply -f kube-flannel.yml, first time: CREATE.
        body = review(stored(cm), "CREATE")
        r = seed_server.post(c, "/validate", body)
        assert r.status_code == 200
        out = r.json()
        assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
        resp = out["response"]
        assert resp["uid"] == body["request"]["uid"]
        assert resp["allowed"] is False
        assert resp["status"]["code"] == 403
        msg = resp["status"]["message"]
        assert "10.244.0.0/16" in msg and "172.18.0.0/16" in msg and "--cluster-cidr" in msg
        assert '"Network": "172.18.0.0/16"' in msg

        # The operator fixes Network and applies again: UPDATE with oldObject.
        fixed = copy.deepcopy(cm)
        fixed["data"]["net-conf.json"] = fixed["data"]["net-conf.json"].replace(
            "10.244.0.0/16", "172.18.0.0/16")
        body = review(stored(fixed, "1002"), "UPDATE", old=stored(cm, "1001"))
        resp = seed_server.post(c, "/validate", body).json()["response"]
        assert resp == {"uid": body["request"]["uid"], "allowed": True}


def test_kubectl_patch_node_to_another_nodes_podcidr_is_denied(seed_server: Running):
    with seed_server.client() as c:
        # worker-0002 registers with a podCIDR (standalone mode indexes what it admits).
        first = review(stored(node("worker-0002", "172.18.1.0/24")), "CREATE")
        assert seed_server.post(c, "/validate", first).json()["response"]["allowed"] is True
        # The seed's quick fix, typed wrong: worker-0001 gets worker-0002's subnet.
        old = stored(node("worker-0001"))
        new = stored(node("worker-0001", podcidr="172.18.1.0/24"), "1002")
        body = review(new, "UPDATE", old=old)
        resp = seed_server.post(c, "/validate", body).json()["response"]
        assert resp["allowed"] is False
        assert "worker-0002" in resp["status"]["message"]
        assert "kubectl patch node worker-0001" in resp["status"]["message"]
        # ... and the free one it suggests is admitted.
        ok = stored(node("worker-0001", podcidr="172.18.0.0/24"), "1002")
        assert seed_server.post(c, "/validate", review(ok, "UPDATE", old=old)).json()[
            "response"]["allowed"] is True


def test_dry_run_is_judged_but_not_indexed(default_server: Running):
    with default_server.client() as c:
        body = review(node("a", "10.244.5.0/24"), "CREATE", dry_run=True)
        assert default_server.post(c, "/validate", body).json()["response"]["allowed"] is True
        assert len(default_server.state.index) == 0


def test_unguarded_kinds_are_allowed_untouched(default_server: Running):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}}
    other_cm = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "x", "namespace": "default"}, "data": {"net-conf.json": "{"}}
    with default_server.client() as c:
        for obj in (pod, other_cm):
            body = review(obj)
            resp = default_server.post(c, "/validate", body).json()["response"]
            assert resp == {"uid": body["request"]["uid"], "allowed": True}


def test_delete_of_the_flannel_configmap_is_refused(default_server: Running):
    with default_server.client() as c:
        body = review(None, "DELETE", old=stored(configmap()))
        resp = default_server.post(c, "/validate", body).json()["response"]
        assert resp["allowed"] is False and "allow-delete" in resp["status"]["message"]


@pytest.mark.parametrize(("body", "headers", "status", "fragment"), [
    (b"", {}, 400, "empty body"),
    (b"{not json", {}, 400, "not JSON"),
    (b"\xff\xfe", {}, 400, "UTF-8"),
    (b"[1]", {}, 400, "JSON object"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
                 "request": {}}).encode(), {}, 400, "admissionReviewVersions"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), {},
     400, "no request"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                 "request": {"uid": 7, "kind": {"kind": "Node"}, "operation": "CREATE"}}).encode(),
     {}, 400, "request.uid"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                 "request": {"uid": "u", "kind": {"kind": "Node"}, "operation": "EXPLODE"}}).encode(),
     {}, 400, "request.operation"),
    (b"{}", {"Content-Type": "text/plain"}, 415, "application/json"),
    (b"[" * 200_000 + b"]" * 200_000, {}, 400, "nested"),
    (b"x" * (8 * 1024 * 1024), {}, 413, "limit"),
])
def test_bad_requests_get_a_4xx_json_body_never_a_500(default_server: Running, body, headers, status,
                                                      fragment):
    with default_server.client() as c:
        r = default_server.post(c, "/validate", body, headers=headers)
        assert r.status_code == status
        assert fragment in r.json()["error"]
        # The server is still healthy afterwards.
        assert c.get("/healthz", extensions={"sni_hostname": SVC_DNS}).status_code == 200


def test_readyz_and_metrics(default_server: Running):
    with default_server.client() as c:
        ext = {"sni_hostname": SVC_DNS}
        assert c.get("/readyz", extensions=ext).status_code == 200
        default_server.post(c, "/validate", review(node("m", "10.244.9.0/24")))
        metrics = c.get("/metrics", extensions=ext).text
        assert 'flannel_guard_admission_requests_total{kind="Node",operation="CREATE",' \
               'verdict="allowed",webhook="validate"} 1.0' in metrics
        assert "flannel_guard_admission_duration_seconds_bucket" in metrics
        default_server.state.ready = False
        assert c.get("/readyz", extensions=ext).status_code == 503
        # No `_created` twin of any counter or histogram.
        assert "_created" not in metrics


def test_wrong_method_and_unknown_path_answer_json_errors(default_server: Running):
    with default_server.client() as c:
        ext = {"sni_hostname": SVC_DNS}
        wrong = c.get("/validate", extensions=ext)
        assert wrong.status_code == 405 and wrong.json() == {"error": "Method Not Allowed"}
        assert wrong.headers["content-type"] == "application/json" and "POST" in wrong.headers["allow"]
        missing = c.get("/nowhere", extensions=ext)
        assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}


def test_warn_mode_admits_with_warnings(tmp_path: Path):
    for running in start(tmp_path, "172.18.0.0/16", Mode.WARN):
        with running.client() as c:
            resp = running.post(c, "/validate", review(configmap())).json()["response"]
            assert resp["allowed"] is True
            assert any("would deny" in w and "172.18.0.0/16" in w for w in resp["warnings"])
            assert all(len(w) <= 256 for w in resp["warnings"])


def apply_patch(obj: dict, resp: dict) -> dict:
    """Apply a JSONPatch response the way the API server does (add/replace of object members)."""
    assert resp["patchType"] == "JSONPatch"
    out = copy.deepcopy(obj)
    for op in json.loads(base64.b64decode(resp["patch"])):
        assert op["op"] in ("add", "replace")
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target = out
        for p in parents:
            target = target[p]
        target[last] = op["value"]
    return out


def test_mutate_gives_a_node_without_podcidr_a_free_one_then_validate_admits_it(seed_server: Running):
    with seed_server.client() as c:
        taken = review(stored(node("worker-0002", "172.18.0.0/24")), "CREATE")
        assert seed_server.post(c, "/validate", taken).json()["response"]["allowed"]
        # The seed: worker-0001 joins with no podCIDR. Mutating first, then validating, as the API server.
        joining = stored(node("worker-0001"))
        body = review(joining, "CREATE")
        resp = seed_server.post(c, "/mutate", body).json()["response"]
        assert resp["uid"] == body["request"]["uid"] and resp["allowed"] is True
        patched = apply_patch(joining, resp)
        assert patched["spec"]["podCIDR"] == "172.18.1.0/24"
        assert patched["spec"]["podCIDRs"] == ["172.18.1.0/24"]
        assert seed_server.post(c, "/validate", review(patched, "CREATE")).json()["response"]["allowed"]
        # A retry of the same admission gets the same CIDR.
        again = seed_server.post(c, "/mutate", review(joining, "CREATE")).json()["response"]
        assert apply_patch(joining, again)["spec"]["podCIDR"] == "172.18.1.0/24"


def test_mutate_leaves_a_node_with_podcidr_untouched_and_dry_run_writes_nothing(seed_server: Running):
    with seed_server.client() as c:
        resp = seed_server.post(c, "/mutate", review(node("a", "172.18.9.0/24"))).json()["response"]
        assert "patch" not in resp and resp["allowed"]
        resp = seed_server.post(c, "/mutate", review(node("b"), dry_run=True)).json()["response"]
        assert apply_patch(node("b"), resp)["spec"]["podCIDR"] == "172.18.0.0/24"
        resp = seed_server.post(c, "/mutate", review(node("c"))).json()["response"]
        assert apply_patch(node("c"), resp)["spec"]["podCIDR"] == "172.18.0.0/24"


def test_mutate_admits_without_a_podcidr_when_the_range_is_exhausted(tmp_path: Path):
    """kube-controller-manager's range allocator lets the Node register without a podCIDR
    (pkg/controller/nodeipam/ipam/range_allocator.go, event CIDRNotAvailable); so does this."""
    for running in start(tmp_path, "10.244.0.0/24"):
        with running.client() as c:
            assert running.post(c, "/mutate", review(node("a"))).json()["response"]["allowed"]
            resp = running.post(c, "/mutate", review(node("b"))).json()["response"]
            assert resp["allowed"] is True and "patch" not in resp
            assert "holds 1 node CIDR(s) of /24" in resp["warnings"][0]


def test_fix_network_corrects_kube_flannel_yml_then_validate_admits_it(tmp_path: Path):
    for running in start(tmp_path, "172.18.0.0/16", fix=True):
        cm = configmap()
        with running.client() as c:
            resp = running.post(c, "/mutate", review(stored(cm))).json()["response"]
            patched = apply_patch(cm, resp)
            before = cm["data"]["net-conf.json"]
            assert patched["data"]["net-conf.json"] == before.replace("10.244.0.0/16", "172.18.0.0/16")
            assert patched["data"]["cni-conf.json"] == cm["data"]["cni-conf.json"]
            assert any("corrected to 172.18.0.0/16" in w for w in resp["warnings"])
            assert running.post(c, "/validate", review(patched)).json()["response"]["allowed"]
            # Stranding: a node inside the old Network exists, so no rewrite, and validation refuses.
            running.state.index.set("old", [ipaddress.ip_network("10.244.1.0/24")])
            resp = running.post(c, "/mutate", review(stored(cm))).json()["response"]
            assert "patch" not in resp
            assert not running.post(c, "/validate", review(cm)).json()["response"]["allowed"]


def test_fix_network_with_unknown_cluster_cidr_is_refused_not_rewritten(tmp_path: Path):
    for running in start(tmp_path, None, fix=True):
        with running.client() as c:
            resp = running.post(c, "/mutate", review(configmap())).json()["response"]
            assert "patch" not in resp
            resp = running.post(c, "/validate", review(configmap())).json()["response"]
            assert resp["allowed"] is False and "cluster-cidr is unknown" in resp["status"]["message"]


class _UnwritableStore(MemoryStore):
    async def create(self, cidr, node):
        from webhook.control.allocator import StoreUnavailable

        raise StoreUnavailable("Lease create answered 503 ServiceUnavailable")


@pytest.mark.parametrize(("policy", "allowed"), [("admit", True), ("deny", False)])
def test_unwritable_reservations_follow_the_configured_policy(tmp_path: Path, policy: str, allowed: bool):
    for running in start(tmp_path, "10.244.0.0/16", store=_UnwritableStore(), on_reservation_failure=policy):
        with running.client() as c:
            resp = running.post(c, "/mutate", review(node("a"))).json()["response"]
        assert resp["allowed"] is allowed and "patch" not in resp
        text = resp["warnings"][0] if allowed else resp["status"]["message"]
        assert "could not reserve a podCIDR for node a" in text and "503" in text

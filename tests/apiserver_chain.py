"""kube-apiserver's admission chain, played from the shipped webhook configurations.

No kube-apiserver binary exists here, so this restates what it does with a write, from its
source (``staging/src/k8s.io/apiserver/pkg/admission/plugin/webhook``), and plays it over real
connections: the webhook configurations as ``kubectl kustomize manifests/`` or ``helm template
charts/flannel-guard`` render them, the replicas as real server processes on 127.0.0.1, and the
store as the loopback emulated API (tests/kube_emulator.py).

- *Which webhooks* (``generic/webhook.go`` ``ShouldCallHook``): a rule matches the operation,
  group, version and resource/subresource (``predicates/rules/rules.go``); a namespaced object's
  namespace matches ``namespaceSelector`` (cluster-scoped objects such as Nodes always do);
  every matchCondition is true (``matchconditions/matcher.go``: a false one skips the webhook;
  otherwise an error falls under failurePolicy). The rule and condition part is
  tests/admission_match.py's, shared with the matchConditions tests.
- *Order*: configurations sorted by name, webhooks in their order (``configuration/
  mutating_webhook_manager.go``); mutating webhooks one after another, each seeing the previous
  one's patch (``mutating/dispatcher.go``), then validating webhooks, all on the mutated object
  (``validating/dispatcher.go`` calls them in parallel). Between the two, the object's own
  validation (here: the API server's podCIDR immutability, ``pkg/apis/core/validation``
  ``ValidateNodeUpdate``).
- *A call*: an AdmissionReview v1 POSTed to ``clientConfig.service.path`` on one endpoint of the
  Service (round robin over the ready endpoints, as kube-proxy's ClusterIP would), bounded by
  ``timeoutSeconds``. A call that fails (no endpoint, refused connection, timeout, a non-200
  answer) falls under ``failurePolicy``: ``Ignore`` goes on without it, ``Fail`` refuses the
  write with HTTP 500 "failed calling webhook" (``apierrors.NewInternalError``). A denial
  refuses it with the webhook's status code, at least 400 (``errors/statuserror.go``
  ``ToStatusErr``).
- *Endpoints* follow readiness as the endpoints controller does: kubelet probes ``/readyz``
  every ``period`` and the change reaches the Service ``lag`` seconds later. A replica that is
  SIGTERMed stays in the endpoints until then; its ``--shutdown-delay`` covers that window.

The caller trusts the test servers' CA (the rendered ``caBundle`` belongs to the render's own
certificates, which no server here holds); everything else is read from the render.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import itertools
import shutil
import signal
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import httpx
import jsonpatch
import yaml
from admission_match import Webhook, conditions, hook_of, request, rules_match
from admission_policy import PolicySet, evaluate, request_attrs
from kube_emulator import FakeKubeApi

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = ROOT / "tools" / "bin" / "kubectl"
HELM = ROOT / "tools" / "bin" / "helm"

Obj = dict[str, Any]

# -- the webhook configurations, as rendered ------------------------------------------------


def _certs(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "webhook", "certs", "--service", "flannel-guard", "--namespace",
                    "flannel-guard", "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
    return out


def render(how: str, tmp: Path, *, admission_policy: bool = False) -> list[Obj]:
    """Every object of the default install (with the admission-policy component if asked), rendered
    by ``kustomize`` or ``helm``, with the real tools."""
    if how == "kustomize":
        tree = tmp / "manifests"
        shutil.copytree(ROOT / "manifests", tree, ignore=lambda d, names: (
            [n for n in names if n not in {"README.md", "kustomization.yaml"}] if Path(d).name == "certs"
            else []))
        _certs(tree / "certs")
        target = tree
        if admission_policy:  # as manifests/README.md composes it
            target = tree / "overlays" / "with-admission-policy"
            target.mkdir()
            (target / "kustomization.yaml").write_text(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                "resources: [../../base, ../../certs]\n"
                "components: [../../components/admission-policy, ../../components/ca-bundle-from-secret]\n")
        command = [str(KUBECTL), "kustomize", str(target)]
    elif how == "helm":
        certs = _certs(tmp / "helm-certs")
        command = [str(HELM), "template", "flannel-guard", str(ROOT / "charts" / "flannel-guard"),
                   "--namespace", "flannel-guard",
                   *[a for k in ("crt", "key") for a in ("--set-file", f"tls.{k}={certs / f'tls.{k}'}")],
                   "--set-file", f"tls.ca={certs / 'ca.crt'}",
                   *(["--set", "admissionPolicy.enabled=true"] if admission_policy else [])]
    else:
        raise ValueError(how)
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@dataclass(frozen=True)
class HookConfig:
    """One webhook as kube-apiserver holds it: the match part, where it is called, and how it fails."""

    hook: Webhook
    configuration: str
    path: str
    timeout: float
    namespace_selector: Obj

    @property
    def name(self) -> str:
        return self.hook.name


def hook_configs(objs: list[Obj]) -> list[HookConfig]:
    """Mutating, then validating webhooks, each in configuration-name order (the API server's order)."""
    out = []
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for conf in sorted((o for o in objs if o["kind"] == kind), key=lambda o: o["metadata"]["name"]):
            for doc in conf.get("webhooks", []):
                assert "objectSelector" not in doc, "objectSelector is not played here"
                out.append(HookConfig(hook_of(doc, kind.startswith("Mutating")), conf["metadata"]["name"],
                                      doc["clientConfig"]["service"].get("path", "/"),
                                      float(doc.get("timeoutSeconds", 10)),
                                      doc.get("namespaceSelector") or {}))
    return out


def selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions: In, NotIn, Exists, DoesNotExist)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


# -- the Service's endpoints ------------------------------------------------------------------


@dataclass
class Endpoints:
    """The ready replicas the Service routes to, following each replica's /readyz after ``lag``."""

    ca: Path
    period: float = 0.1
    lag: float = 0.2
    ready: list[str] = field(default_factory=list)
    _rr: itertools.count = field(default_factory=itertools.count)
    _watched: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _pending: set[asyncio.Task[None]] = field(default_factory=set)  # changes on their way (referenced)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def pick(self) -> str | None:
        return self.ready[next(self._rr) % len(self.ready)] if self.ready else None

    async def watch(self, url: str) -> None:
        """Probe ``url`` from now on (kubelet's readinessProbe of a new pod)."""
        self._watched[url] = asyncio.get_running_loop().create_task(self._probe(url))

    async def _set(self, url: str, ready: bool) -> None:
        await asyncio.sleep(self.lag)  # the endpoints controller's propagation, by design not a sync
        async with self._changed:
            if ready and url not in self.ready:
                self.ready.append(url)
            elif not ready and url in self.ready:
                self.ready.remove(url)
            self._changed.notify_all()

    async def _probe(self, url: str) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        state = False
        async with httpx.AsyncClient(verify=ctx, timeout=2) as client:
            while True:
                try:
                    now = (await client.get(f"{url}/readyz")).status_code == 200
                except httpx.HTTPError:
                    now = False
                if now != state:
                    state = now
                    task = asyncio.get_running_loop().create_task(self._set(url, now))
                    self._pending.add(task)
                    task.add_done_callback(self._pending.discard)
                await asyncio.sleep(self.period)  # kubelet's periodSeconds

    async def wait(self, predicate: Callable[[list[str]], bool], timeout: float = 60) -> None:
        """Until ``predicate(ready)`` holds (each endpoints change wakes it)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self.ready)), timeout)

    async def close(self) -> None:
        tasks = [*self._watched.values(), *self._pending]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- the chain ---------------------------------------------------------------------------------


@dataclass
class Refused(Exception):
    """A write the chain refused: the HTTP status and message kube-apiserver answers with."""

    code: int
    message: str


@dataclass
class Chain:
    """Admission as kube-apiserver runs it for one write, against ``hooks`` and ``endpoints``."""

    hooks: list[HookConfig]
    endpoints: Endpoints
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> labels
    # ValidatingAdmissionPolicies (tests/admission_policy.py PolicySet) and where their params are.
    policies: PolicySet | None = None
    params: Callable[[], Mapping[tuple[str, str], Obj]] = dict
    calls: int = 0
    failed_calls: list[str] = field(default_factory=list)   # webhook: why (any failurePolicy)
    refused: list[str] = field(default_factory=list)        # every refused write: why
    _client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(self.endpoints.ca)))
        return self._client

    def _should_call(self, cfg: HookConfig, operation: str, obj: Obj | None, old: Obj | None,
                     kind: str, resource: str, namespace: str) -> bool:
        if not rules_match(cfg.hook, operation, resource):
            return False
        if namespace:
            labels = self.namespaces.get(namespace, {}) | {"kubernetes.io/metadata.name": namespace}
            if not selector_matches(cfg.namespace_selector, labels):
                return False
        meta = (obj if obj is not None else old or {}).get("metadata", {})
        match = conditions(cfg.hook, request(operation, kind, resource, "", meta.get("name", ""), namespace),
                           obj, old)
        if match.rejected:
            raise Refused(500, f'Internal error occurred: failed calling webhook "{cfg.name}":'
                               " matchConditions: an expression failed")
        return match.called

    async def _call(self, cfg: HookConfig, review: Obj) -> Obj | None:
        """The webhook's AdmissionResponse, or None after a failed call that failurePolicy Ignore skips."""
        self.calls += 1
        url = self.endpoints.pick()
        try:
            if url is None:
                raise httpx.ConnectError('service "flannel-guard" has no endpoints available')
            r = await self._http().post(f"{url}{cfg.path}", json=review, timeout=cfg.timeout)
            if r.status_code != 200:
                raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request, response=r)
            return r.json()["response"]
        except (httpx.HTTPError, ValueError, KeyError) as e:
            why = f"{type(e).__name__}: {e}"
            self.failed_calls.append(f"{cfg.name}: {why}")
            if cfg.hook.failure_policy == "Ignore":
                return None
            raise Refused(500, f'Internal error occurred: failed calling webhook "{cfg.name}": {why}') from e

    async def admit(self, operation: str, obj: Obj | None, old: Obj | None, *, kind: str, resource: str,
                    namespace: str = "", username: str = "kubernetes-admin", dry_run: bool = False,
                    check: Callable[[Obj | None], None] | None = None) -> Obj | None:
        """The object to store, or :class:`Refused`; ``check`` is the object's own validation."""
        try:
            obj = await self._admit(operation, obj, old, kind=kind, resource=resource, namespace=namespace,
                                    username=username, dry_run=dry_run, check=check)
        except Refused as e:
            self.refused.append(e.message)
            raise
        return obj

    async def _admit(self, operation: str, obj: Obj | None, old: Obj | None, *, kind: str, resource: str,
                     namespace: str, username: str, dry_run: bool,
                     check: Callable[[Obj | None], None] | None) -> Obj | None:
        obj = copy.deepcopy(obj)
        for validating in (False, True):
            if validating and check is not None:
                check(obj)
            if validating and self.policies is not None:
                self._policies(operation, obj, old, kind=kind, resource=resource, namespace=namespace,
                               username=username)
            for cfg in self.hooks:
                if cfg.hook.mutating is validating:
                    continue
                if not self._should_call(cfg, operation, obj, old, kind, resource, namespace):
                    continue
                review = _review(operation, obj, old, kind=kind, resource=resource, namespace=namespace,
                                 username=username, dry_run=dry_run)
                resp = await self._call(cfg, review)
                if resp is None:
                    continue
                if not resp.get("allowed"):
                    status = resp.get("status") or {}
                    raise Refused(max(int(status.get("code") or 400), 400),
                                  f'admission webhook "{cfg.name}" denied the request:'
                                  f" {status.get('message') or 'without explanation'}")
                if resp.get("patch") and not validating:
                    obj = jsonpatch.apply_patch(obj, jsonpatch.JsonPatch.from_string(
                        base64.b64decode(resp["patch"]).decode()))
        return obj

    def _policies(self, operation: str, obj: Obj | None, old: Obj | None, *, kind: str, resource: str,
                  namespace: str, username: str) -> None:
        """The ValidatingAdmissionPolicy plugin, between mutating and validating webhooks (kube-apiserver's
        plugin order, ``pkg/kubeapiserver/options/plugins.go``): no webhook, no replica involved."""
        assert self.policies is not None
        meta = (obj if obj is not None else old or {}).get("metadata", {})
        req = request_attrs(operation, group="", version="v1", resource=resource, kind=kind,
                            name=meta.get("name", ""), namespace=namespace, username=username)
        ns_obj = ({"metadata": {"name": namespace, "labels": self.namespaces.get(namespace, {})
                                | {"kubernetes.io/metadata.name": namespace}}} if namespace else None)
        for name in self.policies.policies:
            verdict = evaluate(self.policies, name, req, obj, old, params=self.params(), namespace=ns_obj)
            if not verdict.allowed:
                raise Refused(422, f"ValidatingAdmissionPolicy '{name}' denied request:"
                                   f" {'; '.join(verdict.messages) or verdict.reason}")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _review(operation: str, obj: Obj | None, old: Obj | None, *, kind: str, resource: str, namespace: str,
            username: str, dry_run: bool) -> Obj:
    meta = (obj if obj is not None else old or {}).get("metadata", {})
    req = request(operation, kind, resource, "", meta.get("name", ""), namespace, username)
    req |= {"uid": str(uuid.uuid4()), "object": obj, "oldObject": old, "dryRun": dry_run,
            "userInfo": {"username": username, "groups": ["system:authenticated"]}}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


# -- the store: the emulated API, writing only what the chain admits ----------------------------


def _pod_cidrs_immutable(old: Obj) -> Callable[[Obj | None], None]:
    """ValidateNodeUpdate (pkg/apis/core/validation): a podCIDR may go from "" to valid, never change."""
    def check(new: Obj | None) -> None:
        before = (old.get("spec") or {}).get("podCIDRs") or []
        after = ((new or {}).get("spec") or {}).get("podCIDRs") or []
        if before and after != before:
            raise Refused(422, "spec.podCIDRs: Forbidden: node updates may not change podCIDR except"
                               ' from "" to valid')
    return check


@dataclass
class AdmittingApi(FakeKubeApi):
    """The emulated API with the admission chain in front of every Node and ConfigMap write.

    kubelet's registration (POST nodes), kube-controller-manager's and ``kubectl patch``'s merge
    patches of a Node, the assigning loop's patches, and ConfigMap creates and replaces all pass
    through ``chain`` before anything is stored; what is refused is answered as kube-apiserver
    answers it and never stored.
    """

    chain: Chain | None = None

    def _add_routes(self, app: aiohttp.web.Application) -> None:
        # Before the emulator's own: the first route registered for a path answers it.
        app.router.add_post("/api/v1/nodes", self._create_node)
        app.router.add_put("/api/v1/namespaces/{ns}/configmaps/{name}", self._write_configmap)
        app.router.add_post("/api/v1/namespaces/{ns}/configmaps", self._write_configmap)
        super()._add_routes(app)

    def _refusal(self, e: Refused) -> aiohttp.web.StreamResponse:
        reason = {400: "BadRequest", 403: "Forbidden", 422: "Invalid"}.get(e.code, "InternalError")
        return aiohttp.web.json_response(self._status(e.code, reason, e.message), status=e.code)

    async def _create_node(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self._seen(request)
        obj = await request.json()
        name = obj["metadata"]["name"]
        if name in self.nodes:
            exists = self._status(409, "AlreadyExists", f'nodes "{name}" already exists')
            return aiohttp.web.json_response(exists, status=409)
        assert self.chain is not None
        try:
            obj = await self.chain.admit("CREATE", obj, None, kind="Node", resource="nodes")
        except Refused as e:
            return self._refusal(e)
        assert obj is not None
        await self.put_node(obj)
        return aiohttp.web.json_response(self.nodes[name], status=201)

    async def _patch_node(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self._seen(request)
        name = request.match_info["name"]
        patch = await request.json()
        if name not in self.nodes:
            return self._node_not_found(name)
        old = copy.deepcopy(self.nodes[name])
        new = _merge(old, patch)
        assert self.chain is not None
        try:
            new = await self.chain.admit("UPDATE", new, old, kind="Node", resource="nodes",
                                         check=_pod_cidrs_immutable(old))
        except Refused as e:
            return self._refusal(e)
        assert new is not None
        self.patches.append((name, (patch or {}).get("spec") or {}))
        await self.put_node(new)
        return aiohttp.web.json_response(self.nodes[name])

    async def _write_configmap(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self._seen(request)
        ns = request.match_info["ns"]
        obj = await request.json()
        obj.setdefault("metadata", {})["namespace"] = ns
        key = ("configmaps", ns, obj["metadata"]["name"])
        old = copy.deepcopy(self.objects.get(key))
        assert self.chain is not None
        try:
            obj = await self.chain.admit("UPDATE" if old else "CREATE", obj, old, kind="ConfigMap",
                                         resource="configmaps", namespace=ns)
        except Refused as e:
            return self._refusal(e)
        assert obj is not None
        await self.put_object("configmaps", obj)
        return aiohttp.web.json_response(self.objects[key], status=200 if old else 201)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 60) -> None:
        """Until ``predicate()`` holds of the stored objects (each stored change wakes it)."""
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(predicate), timeout)


def _merge(target: Any, patch: Any) -> Any:
    """A JSON merge patch (RFC 7386), as ``application/merge-patch+json`` is applied."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


# -- a cluster: the store, the chain, the Service and its replicas -----------------------------


class Cluster:
    """The emulated API with the chain in front, and flannel-guard's replicas behind the Service.

    ``start()`` adds a replica (a real ``serve --kubeconfig`` process) and waits until the Service
    routes to it; ``kill()`` ends one at once (SIGKILL: a crash, an eviction); ``terminate()`` is a
    rolling update's SIGTERM, waited until the process has exited.
    """

    def __init__(self, hooks: list[HookConfig], tmp: Path, *, cluster_cidr: str = "10.244.0.0/16",
                 args: tuple[str, ...] = (), policies: PolicySet | None = None) -> None:
        from kube_emulator import ApiThread, kubeconfig_file

        self.tmp = tmp
        self.cluster_cidr = cluster_cidr
        self.args = args
        self.api = AdmittingApi(keep_requests=False)
        self.thread = ApiThread(self.api)
        self.kubeconfig = kubeconfig_file(tmp / "kubeconfig", self.api.url)
        self.endpoints = Endpoints(ca=tmp / "ca.crt")
        self.api.chain = self.chain = Chain(hooks, self.endpoints, policies=policies)
        self.chain.params = lambda: {(ns, name): o for (plural, ns, name), o in list(self.api.objects.items())
                                     if plural == "configmaps"}
        self.replicas: dict[str, contextlib.ExitStack] = {}
        self._procs: dict[str, Any] = {}  # url -> server_process.ServerProcess
        self.http = httpx.Client(base_url=self.api.url, timeout=60)

    def start(self) -> str:
        from server_process import serve

        stack = contextlib.ExitStack()
        running = stack.enter_context(serve(self.tmp, "--kubeconfig", str(self.kubeconfig), *self.args,
                                            cluster_cidr=self.cluster_cidr))
        self.replicas[running.url] = stack
        self._procs[running.url] = running
        self.thread.call(self.endpoints.watch(running.url))
        self.thread.call(self.endpoints.wait(lambda ready: running.url in ready))
        return running.url

    def kill(self, url: str) -> None:
        self._procs.pop(url).stop(signal.SIGKILL)
        self.replicas.pop(url).close()

    def terminate(self, url: str) -> None:
        self._procs.pop(url).stop(signal.SIGTERM, wait=60)
        self.replicas.pop(url).close()

    def wait_endpoints(self, predicate: Callable[[list[str]], bool]) -> None:
        self.thread.call(self.endpoints.wait(predicate))

    def wait_stored(self, predicate: Callable[[], bool]) -> None:
        self.thread.call(self.api.wait_for(predicate))

    # -- writes as their writers send them -----------------------------------------------------

    def register(self, name: str, *cidrs: str) -> httpx.Response:
        """kubelet's registration (POST nodes); with ``cidrs``, a Node created with podCIDRs set."""
        spec: Obj = {"podCIDR": cidrs[0], "podCIDRs": list(cidrs)} if cidrs else {}
        return self.http.post("/api/v1/nodes", json={"apiVersion": "v1", "kind": "Node",
                                                     "metadata": {"name": name}, "spec": spec})

    def patch_pod_cidr(self, name: str, *cidrs: str) -> httpx.Response:
        """kube-controller-manager's or ``kubectl patch node``'s merge patch of spec.podCIDR(s)."""
        return self.http.patch(f"/api/v1/nodes/{name}", json={"spec": {"podCIDR": cidrs[0],
                                                                       "podCIDRs": list(cidrs)}},
                               headers={"Content-Type": "application/merge-patch+json"})

    def put_configmap(self, namespace: str, name: str, data: dict[str, str]) -> httpx.Response:
        return self.http.put(f"/api/v1/namespaces/{namespace}/configmaps/{name}", json={
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
            "data": data})

    def pod_cidrs(self) -> dict[str, list[str]]:
        return {n: list((o.get("spec") or {}).get("podCIDRs") or []) for n, o in list(self.api.nodes.items())}

    def duplicates(self) -> list[str]:
        """Every podCIDR stored on more than one Node, or overlapping another node's."""
        import ipaddress

        owned = [(ipaddress.ip_network(c), n) for n, cs in self.pod_cidrs().items() for c in cs]
        return sorted({f"{a}@{na}~{b}@{nb}" for (a, na), (b, nb) in itertools.combinations(owned, 2)
                       if na != nb and a.version == b.version and a.overlaps(b)})

    def close(self) -> None:
        for url in list(self.replicas):
            self.kill(url)
        self.http.close()
        self.thread.call(self.endpoints.close())
        self.thread.call(self.chain.close())
        self.thread.close()

"""Hostile input: hypothesis-generated garbage, over HTTPS and straight into the pure functions.

The contract, for whatever reaches the port: a 4xx with a JSON ``{"error": ...}``
body, or a 200 AdmissionReview whose ``response.uid`` echoes the request's;
never a 5xx, never an internal error inside a review (a bug answered by
failure stance is still a bug), messages bounded in length; the process keeps
answering and its memory does not grow with garbage.

One server process serves the whole module (standalone, 10.244.0.0/16). The
pure functions get the same strategies at a higher volume.

``FUZZ_EXAMPLES=N`` raises every test's ``max_examples`` to N for a longer run
made by hand (``FUZZ_EXAMPLES=20000 pytest tests/test_fuzz.py``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import flannel_configmap, make_view, node, review
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kube_emulator import free_port

from webhook.core.constants import NAMESPACE, SERVICE
from webhook.core.rules import RuleSettings
from webhook.core.rules.configmap import review_configmap
from webhook.core.rules.fixnetwork import fix_network
from webhook.core.rules.flannel import parse_net_conf
from webhook.core.rules.node import review_node
from webhook.service import certs
from webhook.service.admission import BadReview, parse_review

# ---------------------------------------------------------------------------------------------
# Budgets: the module stays well under 40 s; FUZZ_EXAMPLES overrides every one of them.

_LONG = int(os.environ.get("FUZZ_EXAMPLES", "0"))


def budget(n: int) -> Any:
    return settings(max_examples=_LONG or n, deadline=None, derandomize=not _LONG,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# A denial message is cut at 3,000 characters (rules.MESSAGE_MAX), a warning at 256 and all
# warnings at 4 KiB (the API server's limits); an error body is a sentence.
MESSAGE_MAX = 3000
WARNING_MAX = 256
WARNINGS_TOTAL = 4096
ERROR_MAX = 400
FINDING_MAX = 1500

# ---------------------------------------------------------------------------------------------
# Strategies

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=6,
)


_CIDR_SHAPES = [
    lambda v4, v6, n, p: str(n),                                     # valid
    lambda v4, v6, n, p: f"{v4}/{p % 33}",                           # host bits, probably
    lambda v4, v6, n, p: f"10.244.{p % 256}.0/24",                   # a node CIDR inside the range
    lambda v4, v6, n, p: f" {n}",                                    # whitespace
    lambda v4, v6, n, p: f"{n} ",
    lambda v4, v6, n, p: str(n).replace("/", " /"),
    lambda v4, v6, n, p: f"{n.network_address}%eth0/{n.prefixlen}",  # zone id
    lambda v4, v6, n, p: ".".join(o.zfill(3) for o in str(v4).split(".")) + "/24",  # leading zeros
    lambda v4, v6, n, p: f"::ffff:{v4}/{96 + p % 33}",               # IPv4-mapped IPv6
    lambda v4, v6, n, p: f"{v4}/{p}",                                # prefix too long, maybe
    lambda v4, v6, n, p: f"{v6}/{p}",
    lambda v4, v6, n, p: f"{v4}",                                    # no prefix
    lambda v4, v6, n, p: f"{v4}/-1",
    lambda v4, v6, n, p: f"{v4}/+8",
    lambda v4, v6, n, p: str(n).upper(),
    lambda v4, v6, n, p: f"[{v6}]/64",
]


@st.composite
def cidr_texts(draw: st.DrawFn) -> str:
    """CIDR-looking text: valid, and each way Go and Kubernetes would read differently or refuse."""
    shape = draw(st.integers(0, len(_CIDR_SHAPES)))
    if shape == len(_CIDR_SHAPES):
        return draw(st.text(max_size=30))
    v4 = draw(st.ip_addresses(v=4))
    v6 = draw(st.ip_addresses(v=6))
    p = draw(st.integers(0, 140))
    net = ipaddress.ip_network(f"{v6}/{p % 129}" if p % 2 else f"{v4}/{p % 33}", strict=False)
    return _CIDR_SHAPES[shape](v4, v6, net, p)


def _key_case(name: str, mode: int) -> str:
    return [name, name.lower(), name.upper(), name.swapcase()][mode % 4]


@st.composite
def net_conf_texts(draw: st.DrawFn) -> str:
    """net-conf.json: well-formed and not, huge, nested, duplicated keys, numbers Go would refuse."""
    fields = ["Network", "IPv6Network", "EnableIPv4", "EnableIPv6", "SubnetLen", "SubnetMin",
              "SubnetMax", "Backend", "EnableNFTables", "IPv6SubnetLen", "Netwrok"]
    values = st.one_of(cidr_texts(), json_values, st.sampled_from([
        "1" * 5000, "24.0", "-1", "1e3", "18446744073709551616", "true", "null"]).map(
            lambda raw: _Raw(raw)))
    backend = st.one_of(
        st.fixed_dictionaries({"Type": st.sampled_from(
            ["vxlan", "VXLAN", "host-gw", "wireguard", "udp", "ipsec", "nope", ""])},
            optional={"VNI": st.one_of(st.integers(-5, 2**25), json_values), "Port": json_values,
                      "Mode": json_values, "PSK": st.text(max_size=120),
                      "DirectRouting": json_values}),
        json_values)
    pairs: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(0, 7))):
        name = draw(st.sampled_from(fields))
        pairs.append((_key_case(name, draw(st.integers(0, 3))),
                      draw(backend) if name == "Backend" else draw(values)))
    if pairs and draw(st.booleans()):
        pairs.append(draw(st.sampled_from(pairs)))          # a duplicate key
    if draw(st.integers(0, 9)) == 0:
        pairs.append(("k" * draw(st.integers(1, 20000)), 1))  # a huge unknown key, maybe twice
        pairs.append(pairs[-1])
    text = "{" + ",".join(f"{json.dumps(k)}:{_encode(v)}" for k, v in pairs) + "}"
    shape = draw(st.integers(0, 11))
    if shape == 0:
        depth = draw(st.integers(1, 20000))
        return "[" * depth + "]" * depth
    if shape == 1:
        return text[: draw(st.integers(0, len(text)))] + draw(st.sampled_from(["", "\n", "\r\n", " "]))
    if shape == 2:
        return text.replace("}", ',"Pad":"' + "x" * draw(st.integers(0, 100_000)) + '"}', 1)
    if shape == 3:
        return draw(st.text(max_size=60))
    if shape == 4:
        return json.dumps(draw(json_values))
    return text + draw(st.sampled_from(["", "\n", " \n\n"]))


class _Raw(str):
    """A literal written into the JSON text as is (a number Python would not produce)."""


def _encode(value: Any) -> str:
    return str(value) if isinstance(value, _Raw) else json.dumps(value)


@st.composite
def node_objects(draw: st.DrawFn) -> dict[str, Any]:
    cidrs = draw(st.lists(st.one_of(cidr_texts(), json_values), max_size=4))
    obj = node(draw(st.sampled_from(["worker-1", "n", "x" * 300])))
    spec: dict[str, Any] = {}
    if cidrs:
        spec["podCIDRs"] = cidrs
    if draw(st.booleans()):
        spec["podCIDR"] = draw(st.one_of(cidr_texts(), json_values))
    obj["spec"] = draw(st.one_of(st.just(spec), json_values))
    if draw(st.booleans()):
        obj["metadata"]["annotations"] = {
            "flannel.alpha.coreos.com/public-ip": draw(st.one_of(cidr_texts(), json_values))}
    if draw(st.integers(0, 5)) == 0:
        obj["metadata"] = draw(json_values)
    return obj


@st.composite
def configmap_objects(draw: st.DrawFn) -> dict[str, Any]:
    cm = flannel_configmap(draw(net_conf_texts()))
    if draw(st.booleans()):
        cm["data"]["cni-conf.json"] = draw(st.one_of(
            st.text(max_size=40), st.just('{"a":' + "1" * 5000 + "}"), json_values.map(json.dumps)))
    if draw(st.integers(0, 5)) == 0:
        cm["data"] = draw(json_values)
    if draw(st.integers(0, 5)) == 0:
        cm["metadata"]["annotations"] = draw(json_values)
    return cm


objects = st.one_of(node_objects(), configmap_objects(),
                    st.dictionaries(st.text(max_size=8), json_values, max_size=5))

_REQUEST_KEYS = ["uid", "kind", "operation", "name", "namespace", "object", "oldObject", "dryRun",
                 "resource", "userInfo", "options", "subResource"]


@st.composite
def reviews(draw: st.DrawFn) -> dict[str, Any]:
    """An AdmissionReview, often with fields missing, mistyped, or an object of the wrong kind."""
    obj = draw(objects)
    body = review(node("placeholder"), draw(st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"])),
                  dry_run=draw(st.booleans()))
    kind = draw(st.sampled_from(["Node", "ConfigMap", "Pod"]))  # under the right resource or not
    meta = obj.get("metadata")
    body["request"].update({
        "kind": {"group": "", "version": "v1", "kind": kind},
        "name": meta.get("name") if isinstance(meta, dict) else None,
        "namespace": "kube-flannel" if kind == "ConfigMap" else None,
        "object": obj, "oldObject": draw(st.one_of(st.none(), objects)),
    })
    request = body["request"]
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(_REQUEST_KEYS))
        if draw(st.booleans()):
            request.pop(key, None)
        else:
            request[key] = draw(json_values)
    if draw(st.integers(0, 7)) == 0:
        body[draw(st.sampled_from(["apiVersion", "kind", "request"]))] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        request["uid"] = draw(st.sampled_from(["\ud800", "u" * 10000, "", "é"]))
    return body


# ---------------------------------------------------------------------------------------------
# The contract


def check_error(status: int, body: bytes) -> None:
    assert 400 <= status < 500, (status, body[:300])
    doc = json.loads(body)
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"]
    assert len(doc["error"]) <= ERROR_MAX, doc["error"][:500]


def check_response(sent: Any, status: int, body: bytes) -> None:
    """A 4xx with ``{"error": ...}``, or a 200 AdmissionReview echoing the uid; nothing else."""
    if status != 200:
        check_error(status, body)
        return
    doc = json.loads(body)
    assert doc["apiVersion"] == "admission.k8s.io/v1" and doc["kind"] == "AdmissionReview"
    resp = doc["response"]
    assert resp["uid"] == sent["request"]["uid"]
    assert isinstance(resp["allowed"], bool)
    # A rule that raised is answered by failure stance: survivable, but a bug all the same.
    assert (resp.get("status") or {}).get("reason") != "InternalError", resp
    if not resp["allowed"]:
        assert len(resp["status"]["message"]) <= MESSAGE_MAX
    warnings = resp.get("warnings") or []
    assert all(len(w) <= WARNING_MAX for w in warnings)
    assert sum(map(len, warnings)) <= WARNINGS_TOTAL


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------------------------
# The pure functions, for volume


@budget(400)
@given(reviews())
def test_parse_review_accepts_a_review_or_raises_bad_review(doc: dict[str, Any]) -> None:
    try:
        request = parse_review(encode(doc))
    except BadReview as e:
        assert 400 <= e.status < 500 and 0 < len(str(e)) <= ERROR_MAX
        return
    assert request.uid == doc["request"]["uid"]


@budget(500)
@given(st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_parse_review_of_bytes_never_raises_anything_but_bad_review(body: bytes) -> None:
    with contextlib.suppress(BadReview):
        parse_review(body)


@budget(700)
@given(net_conf_texts())
def test_parse_net_conf_never_raises_and_its_findings_are_bounded(text: str) -> None:
    result = parse_net_conf(text)
    for f in result.findings:
        assert len(f.summary) <= FINDING_MAX and len(f.text()) <= FINDING_MAX * 2, f.summary[:200]


_VIEW = make_view("10.244.0.0/16", nodes={"a": ["10.244.1.0/24"], "b": ["10.244.2.0/24"]})
_DUAL = make_view("10.244.0.0/16,fd00:10:244::/56")


@budget(700)
@given(node_objects(), st.one_of(st.none(), node_objects()), st.sampled_from(["CREATE", "UPDATE"]),
       st.sampled_from([_VIEW, _DUAL]))
def test_review_node_never_raises_and_bounds_its_findings(obj: dict, old: dict | None, op: str,
                                                          view: Any) -> None:
    for f in review_node(op, obj, old, view):
        assert len(f.summary) <= FINDING_MAX, f.summary[:200]


@budget(300)
@given(configmap_objects(), st.one_of(st.none(), configmap_objects()),
       st.sampled_from(["CREATE", "UPDATE", "DELETE"]), st.sampled_from([_VIEW, _DUAL]))
def test_review_configmap_and_fix_network_never_raise(obj: dict, old: dict | None, op: str,
                                                     view: Any) -> None:
    for f in review_configmap(op, obj, old, view, RuleSettings()):
        assert len(f.summary) <= FINDING_MAX, f.summary[:200]
    fix = fix_network(obj, view)
    if fix is not None:
        assert all(len(w) <= WARNING_MAX for w in fix.warnings)
        fixed = parse_net_conf(fix.patch[0]["value"]).conf
        assert fixed is not None


# ---------------------------------------------------------------------------------------------
# Over HTTPS: one server process for the module

SVC_DNS = f"{SERVICE}.{NAMESPACE}.svc"


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, ca: Path, log: Path) -> None:
        self.proc, self.port, self.ca, self.log = proc, port, ca, log
        self.client = httpx.Client(base_url=f"https://127.0.0.1:{port}", timeout=30,
                                   verify=ssl.create_default_context(cafile=str(ca)))

    def post(self, path: str, body: bytes, ctype: str = "application/json") -> httpx.Response:
        return self.client.post(path, content=body, headers={"Content-Type": ctype})

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def metric(self, name: str) -> float:
        text = self.client.get("/metrics").text
        return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fuzz")
    certs.write_bundle(certs.generate(SERVICE, NAMESPACE, days=1, extra_ips=["127.0.0.1"]), tmp)
    port = free_port()
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "webhook", "serve", "--standalone", "--cluster-cidr", "10.244.0.0/16",
             "--port", str(port), "--tls-cert", str(tmp / "tls.crt"), "--tls-key", str(tmp / "tls.key")],
            stdout=subprocess.DEVNULL, stderr=out)
    running = Server(proc, port, tmp / "ca.crt", log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            with contextlib.suppress(httpx.HTTPError):
                if running.client.get("/readyz").status_code == 200:
                    break
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.05)
        yield running
        # Whatever the module sent: no traceback in the log, nothing answered by failure stance.
        assert proc.poll() is None, "the server died"
        assert running.metric("flannel_guard_internal_errors_total") == 0
        assert b"Traceback" not in log.read_bytes()
    finally:
        running.client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@budget(300)
@given(doc=reviews(), path=st.sampled_from(["/validate", "/mutate"]))
def test_structured_garbage_over_https_gets_a_4xx_or_a_review_echoing_the_uid(
        server: Server, doc: dict[str, Any], path: str) -> None:
    r = server.post(path, encode(doc))
    check_response(doc, r.status_code, r.content)


_CTYPES = st.one_of(
    st.sampled_from(["application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
                     "text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "",
                     "application/yaml", "application/json-patch+json"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40).map(str.strip),
)


@budget(500)
@given(body=st.one_of(st.binary(max_size=2000), st.sampled_from([
    b"{", b"[]", b"null", b"\xef\xbb\xbf{}", b"\"\\ud800\"", b'{"a":' + b"9" * 5000 + b"}",
    b"[" * 100_000, b"{\"request\":" * 50_000])), ctype=_CTYPES,
    path=st.sampled_from(["/validate", "/mutate"]))
def test_unstructured_garbage_over_https_gets_a_json_4xx(server: Server, body: bytes, ctype: str,
                                                         path: str) -> None:
    r = server.post(path, body, ctype)
    check_error(r.status_code, r.content)


def test_memory_does_not_grow_with_garbage_and_the_process_keeps_answering(server: Server) -> None:
    """Some 1,500 refused requests later, RSS is within a generous bound of where it started."""
    garbage = [b"{nope", b"[" * 50_000, b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}',
               b"\xff" * 1000, json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                           "request": {"uid": 1, "pad": "x" * 20_000}}).encode()]
    big = encode(review(flannel_configmap('{"Network": "10.244.0.0/16",' + '"k":1,' * 20_000 + '"z":1}'),
                        dry_run=True))

    def burst(n: int) -> None:
        for i in range(n):
            r = server.post("/validate", garbage[i % len(garbage)])
            assert 400 <= r.status_code < 500
            if i % 100 == 0:
                assert server.post("/validate", big).status_code == 200

    burst(300)  # warm up: allocator arenas, caches
    before = server.rss_kib()
    burst(1500)
    after = server.rss_kib()
    assert after - before < 30 * 1024, f"RSS grew {before} -> {after} KiB"
    assert server.client.get("/healthz").status_code == 200


def test_a_node_listing_one_cidr_twice_can_be_reindexed() -> None:
    """Found by the long fuzz run: the index dropped a CIDR listed twice twice (KeyError)."""
    from webhook.core.nodeindex import NodeCidrIndex

    index = NodeCidrIndex()
    net = ipaddress.ip_network("10.244.0.0/17")
    index.set("a", [net, net])
    index.set("a", [])
    assert len(index) == 0

"""``doctor --html FILE``: one self-contained page, opened in a real headless Chromium.

The page is written by the CLI from a cluster served on 127.0.0.1, then loaded
from ``file://`` in Debian's chromium (system.mk) over the DevTools protocol: no
console error, no request but the page itself, one cell per node block, hovering
a block names its node, and the embedded data is exactly ``-o json``'s. A
15,000-node page must stay under :data:`PAGE_BUDGET`. Screenshots go to
``build/doctor-html/`` (git-ignored) for people to look at.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from chromium import Chromium, Page
from doctor_cluster import DoctorKubeApi, flannel_configmap, flannel_node, flannel_pod
from kube_emulator import kcm_pod, kube_proxy_configmap, kubeadm_configmap, kubeconfig_file

from webhook import doctor
from webhook.core.discovery import from_controller_manager_pod, from_kubeadm_config
from webhook.core.resolve import resolve
from webhook.doctor import ClusterFacts, ConfigMapFacts, NodeFacts, diagnose
from webhook.doctor.html_report import render_html
from webhook.doctor.json_report import report_document

T = TypeVar("T")
SHOTS = Path(__file__).resolve().parent.parent / "build" / "doctor-html"
#: A 15,000-node page stays under 2 MiB (measured: 1.7 MB; most of it the node table of -o json);
#: with half of them lacking a podCIDR (7,500 patch fixes embedded; measured 4.4 MB) under 5 MiB.
PAGE_BUDGET = 2 * 1024 * 1024
BROKEN_PAGE_BUDGET = 5 * 1024 * 1024
GREEN, GREY, RED, BLUE, ORANGE = [46, 125, 50], [224, 224, 224], [198, 40, 40], [21, 101, 192], [239, 108, 0]
EVIL = "</script><script>document.title='pwned'</script>"


def run(coro: Coroutine[Any, Any, T], bound: float = 240) -> T:
    return asyncio.run(asyncio.wait_for(coro, bound))


def embedded(html: str) -> list[dict[str, Any]]:
    """The grid's data for the hover script: -o json's addressSpace, with the blocks per row."""
    m = re.search(r'<script type="application/json" id="grid-data">(.*?)</script>', html, re.S)
    assert m is not None
    return list(json.loads(m.group(1)))


def grid_doc(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**fam, "cols": min(256, fam["shown"])} for fam in doc["addressSpace"]]


async def open_page(browser: Chromium, path: Path) -> Page:
    page = await browser.page()
    await page.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1,
                    mobile=False)
    await page.goto(path.as_uri())
    assert await page.eval("document.body.dataset.ready") == "1"
    return page


async def hover_text(page: Page, family: int, cell: int) -> str:
    await page.eval(f"window.doctorGrid.grids[{family}].reveal({cell})")
    x, y = await page.eval(f"window.doctorGrid.grids[{family}].center({cell})")
    await page.hover(x, y)
    return str(await page.eval("document.getElementById('tip').textContent"))


def test_the_page_from_a_live_cluster_renders_in_chromium(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Used, free, reserved, conflicting and outside blocks; hover names the node; same data as -o json."""
    page_file = tmp_path / "doctor.html"
    net_conf = json.dumps({"Network": "10.224.0.0/16", "Backend": {"Type": "vxlan"}, "Note": EVIL})

    async def go() -> tuple[dict[str, Any], str]:
        async with DoctorKubeApi() as api:
            api.put("pods", kcm_pod(cluster_cidr="10.244.0.0/16"))
            api.put("configmaps", kubeadm_configmap("v1beta3", pod_subnet="10.244.0.0/16"))
            api.put("configmaps", kube_proxy_configmap("10.244.0.0/16"))
            api.put("configmaps", flannel_configmap(net_conf=net_conf))
            for name, cidrs in {"cp1": ["10.244.0.0/24"], "w1": ["10.244.1.0/24"], "w2": ["10.244.1.0/24"],
                                "w3": ["10.244.8.0/23"], "w4": ["10.99.0.0/24"], "w5": []}.items():
                await api.put_node(flannel_node(name, *cidrs, flannel_ran=bool(cidrs)))
                api.put("pods", flannel_pod(f"kube-flannel-ds-{name}", name, ready=bool(cidrs)))
            api.leases["flannel-guard", "podcidr-v4-10-244-20-0-24"] = {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "podcidr-v4-10-244-20-0-24", "namespace": "flannel-guard",
                             "labels": {"app.kubernetes.io/managed-by": "flannel-guard"},
                             "annotations": {"flannel-guard.io/node": "w6",
                                             "flannel-guard.io/cidr": "10.244.20.0/24"}},
                "spec": {"holderIdentity": "w6", "acquireTime": "2026-11-30T09:00:00.000000Z",
                         "leaseDurationSeconds": 600}}
            config = str(kubeconfig_file(tmp_path / "kubeconfig", api.url))
            code = await asyncio.to_thread(doctor.main, ["doctor", "--kubeconfig", config, "-o", "json",
                                                         "--html", str(page_file)])
            assert code == 1
            out, err = capsys.readouterr()
            assert err.strip() == f"flannel-guard doctor: wrote the HTML report to {page_file.resolve()}"
            return json.loads(out), page_file.read_text()

    doc, html = run(go())
    assert embedded(html) == grid_doc(doc)  # the hover's data is -o json's address space
    assert "<link" not in html and "src=" not in html and "http://" not in html and "https://" not in html
    (family,) = doc["addressSpace"]
    assert (family["blocks"], family["shown"], family["outside"]) == (256, 256, [["w4", "10.99.0.0/24"]])
    assert family["runs"] == [["u", 1], ["c", 1], ["f", 6], ["c", 2], ["f", 10], ["r", 1], ["f", 235]]

    async def browse() -> None:
        async with Chromium() as browser:
            page = await open_page(browser, page_file)
            assert page.errors == []
            assert page.requests == [page_file.as_uri()]
            assert await page.eval("document.body.dataset.cells") == "257"  # 256 blocks + 1 outside
            assert await page.eval("window.doctorGrid.grids.map(g => g.cellsN)") == [257]
            assert await page.eval("document.title") == "flannel-guard doctor: emu"
            # Commands in copyable blocks, never broken mid-word.
            styles = await page.eval("[...document.querySelectorAll('pre.cmd')].map(p => {"
                                     " const s = getComputedStyle(p);"
                                     " return s.wordBreak + ' ' + s.overflowWrap; })")
            assert styles and set(styles) == {"normal normal"}
            assert await page.eval("document.querySelectorAll('pre.cmd button.copy').length") == len(styles)
            # The grid follows the address: one labelled row per /16 (256 blocks of /24), then outside.
            labels = await page.eval("[...document.querySelectorAll('.grid .row > b')]"
                                     ".map(b => b.textContent)")
            assert labels == ["10.244.0.0/16", "outside"]
            assert EVIL in await page.eval("[...document.querySelectorAll('pre')].map(p => p.textContent)"
                                           ".join('\\n')")
            cells = (0, 1, 2, 8, 20, 256)
            colors = [await page.eval(f"window.doctorGrid.grids[0].color({i})") for i in cells]
            assert colors == [GREEN, RED, GREY, RED, BLUE, ORANGE]
            assert await hover_text(page, 0, 0) == "10.244.0.0/24 — used — node cp1"
            assert await hover_text(page, 0, 1) == "10.244.1.0/24 — conflicting — node w1 + w2"
            assert await hover_text(page, 0, 9) == "10.244.9.0/24 — conflicting — node w3"
            assert await hover_text(page, 0, 20) == "10.244.20.0/24 — reserved for w6"
            assert await hover_text(page, 0, 255) == "10.244.255.0/24 — free"
            assert await hover_text(page, 0, 256) == "10.99.0.0/24 — outside — node w4"
            assert await page.screenshot(SHOTS / "cluster.png") > 1000
            assert page.errors == []

    run(browse())


def big_cluster(nodes: int) -> ClusterFacts:
    """``nodes`` nodes in 10.0.0.0/10 (16,384 blocks of /24), named as on EC2; two of them collide."""
    cidr = "10.0.0.0/10"
    kcm = from_controller_manager_pod(kcm_pod(cluster_cidr=cidr))
    pod, _ = from_kubeadm_config(kubeadm_configmap("v1beta3", pod_subnet=cidr))
    assert kcm.service_cluster_ip_range is not None and pod is not None
    res = resolve([kcm.cluster_cidr, pod], services=[kcm.service_cluster_ip_range], controller_managers=[kcm])
    facts = [NodeFacts(f"ip-172-31-{i >> 8}-{i & 255}.eu-west-1.compute.internal",
                       (f"10.{(i >> 8) & 63}.{i & 255}.0/24",)) for i in range(nodes - 1)]
    facts.append(NodeFacts("ip-172-31-99-99.eu-west-1.compute.internal", ("10.0.7.0/24",)))
    conf = json.dumps({"Network": cidr, "Backend": {"Type": "vxlan"}})
    flannel = ConfigMapFacts("kube-flannel", "kube-flannel-cfg", conf)
    return ClusterFacts(resolution=res, configmaps=(flannel,), nodes=tuple(facts))


def test_a_15000_node_page_stays_small_and_draws_every_block(tmp_path: Path) -> None:
    report = diagnose(big_cluster(15000))
    html = render_html(report)
    size = len(html.encode())
    assert size < PAGE_BUDGET, size
    (family,) = report.address_space
    assert (family.blocks, family.shown) == (16384, 16384)
    assert embedded(html) == grid_doc(json.loads(json.dumps(report_document(report))))
    assert html.count('<div class="row">') == 64  # 10.0.0.0/10: a row per /16
    page_file = tmp_path / "doctor-15000.html"
    page_file.write_text(html)

    async def browse() -> None:
        async with Chromium() as browser:
            page = await open_page(browser, page_file)
            assert page.errors == []
            assert page.requests == [page_file.as_uri()]
            assert await page.eval("document.body.dataset.cells") == "16384"
            assert await hover_text(page, 0, 7) == ("10.0.7.0/24 — conflicting — node"
                                                    " ip-172-31-0-7.eu-west-1.compute.internal +"
                                                    " ip-172-31-99-99.eu-west-1.compute.internal")
            assert await hover_text(page, 0, 14998) == ("10.58.150.0/24 — used — node"
                                                        " ip-172-31-58-150.eu-west-1.compute.internal")
            assert await hover_text(page, 0, 16383) == "10.63.255.0/24 — free"
            # The whole page (a 15,000-row node table) is past what a screenshot takes: the grid's view.
            await page.eval("window.doctorGrid.grids[0].reveal(0)")
            shot = await page.call("Page.captureScreenshot", format="png")
            SHOTS.mkdir(parents=True, exist_ok=True)
            (SHOTS / "15000-nodes.png").write_bytes(base64.b64decode(shot["data"]))

    run(browse())


def test_a_15000_node_page_with_7500_nodes_to_patch_stays_under_its_budget() -> None:
    facts = big_cluster(15000)
    half = tuple(NodeFacts(n.name, () if i % 2 else n.pod_cidrs) for i, n in enumerate(facts.nodes))
    report = diagnose(dataclasses.replace(facts, nodes=half))
    assert sum(len(f.fixes) for f in report.findings) == 7500
    size = len(render_html(report).encode())
    assert size < BROKEN_PAGE_BUDGET, size


def test_an_ipv6_family_too_large_to_draw_shows_its_first_blocks() -> None:
    """A /40 of /64s is 16,777,216 blocks: the first MAX_CELLS are drawn, the count stays exact."""
    from webhook.core.cidr import parse_cidr
    from webhook.doctor.addrspace import MAX_CELLS, address_space

    v6 = parse_cidr("fd00:10::/40").network
    nodes = {"a": (parse_cidr("fd00:10::/64").network,), "b": (parse_cidr("fd00:10:1::/64").network,)}
    (family,) = address_space([v6], {4: 24, 6: 64}, nodes)
    assert (family.blocks, family.shown) == (1 << 24, MAX_CELLS)
    assert family.runs == (("u", 1), ("f", MAX_CELLS - 1))  # b lies beyond the drawn blocks
    assert family.names == (0,) and family.outside == ()


def test_without_javascript_the_page_shows_what_the_text_report_shows(tmp_path: Path) -> None:
    """Every table of the text report, server-side rendered: read with script execution disabled."""
    from webhook.doctor.report import GuardRow, ProtectionRow
    from webhook.doctor.text_report import render_text

    report = dataclasses.replace(
        diagnose(big_cluster(40)),
        guard=GuardRow("flannel-guard", True, True, 2, "2027-01-01T00:00:00Z", True, "on",
                       (ProtectionRow("ValidatingAdmissionPolicy", "flannel-guard-podcidr-immutable",
                                      "active", "refuses a podCIDR change while the webhook is down"),)))
    from datetime import UTC, datetime

    html = render_html(report, cluster="prod-eu (cluster eu-1)",
                       generated=datetime(2026, 12, 6, 20, 0, tzinfo=UTC))
    page_file = tmp_path / "nojs.html"
    page_file.write_text(html)

    async def browse() -> str:
        async with Chromium() as browser:
            page = await browser.page()
            await page.call("Emulation.setScriptExecutionDisabled", value=True)
            await page.goto(page_file.as_uri())
            assert await page.eval("document.body.dataset.ready || 'no script'") == "no script"
            await page.screenshot(SHOTS / "no-javascript.png")
            return str(await page.eval("document.body.innerText"))

    text = run(browse())
    assert "cluster prod-eu (cluster eu-1) · 2026-12-06 20:00:00 UTC · flannel-guard " in text
    words = " ".join(text.split()).casefold()
    for line in render_text(report).splitlines():
        if re.match(r"  (?! )(?!\d+\. )(?!- )", line) and "  " in line.strip():  # a table row
            for cell in line.strip().split("  "):
                if cell.strip():
                    assert " ".join(cell.split()).casefold() in words, cell
    for heading in ("Cluster-cidr", "Node CIDR allocation", "Address space", "Flannel ConfigMaps",
                    "flannel-guard", "Protections", "Flannel pods not ready", "Nodes (40"):
        assert heading in text


def test_an_unwritable_html_path_fails_before_the_cluster_is_read(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = kubeconfig_file(tmp_path / "kubeconfig", "http://127.0.0.1:9")  # nothing listens there
    target = tmp_path / "missing" / "doctor.html"
    assert doctor.main(["doctor", "--kubeconfig", str(config), "--html", str(target)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"flannel-guard doctor: --html {target}: no directory {target.parent}\n"

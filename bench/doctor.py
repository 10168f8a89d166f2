"""``python bench/doctor.py``: what ``flannel-guard doctor`` costs at up to 15,000 nodes.

Serves N flannel-annotated Nodes, their flannel pods and the control plane on the
loopback API of ``tests/doctor_cluster.py`` (in a thread), then times
``gather`` (HTTP, every read doctor makes), ``diagnose`` (pure) and the three
renderers, and gives the size of the ``--html`` page and of ``-o json``. Medians
over ``--runs`` runs; prints one JSON document. Measured, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from doctor_cluster import DoctorKubeApi, flannel_configmap, flannel_node, flannel_pod  # noqa: E402
from kube_emulator import ApiThread, client_for, kcm_pod, kube_proxy_configmap, kubeadm_configmap  # noqa: E402

from webhook.doctor import diagnose, gather, render_json, render_text  # noqa: E402
from webhook.doctor.html_report import render_html  # noqa: E402

CIDR = "10.0.0.0/10"  # 16,384 blocks of /24


async def populate(api: DoctorKubeApi, nodes: int) -> None:
    api.put("pods", kcm_pod(cluster_cidr=CIDR))
    api.put("configmaps", kubeadm_configmap("v1beta3", pod_subnet=CIDR))
    api.put("configmaps", kube_proxy_configmap(CIDR))
    api.put("configmaps", flannel_configmap(CIDR))
    for i in range(nodes):
        name = f"ip-172-31-{i >> 8}-{i & 255}.eu-west-1.compute.internal"
        await api.put_node(flannel_node(name, f"10.{(i >> 8) & 63}.{i & 255}.0/24",
                                        internal_ip=f"172.31.{i >> 8}.{i & 255}"))
        api.put("pods", flannel_pod(f"kube-flannel-ds-{i:05d}", name))


def one(nodes: int, api_thread: ApiThread) -> dict[str, Any]:
    client = client_for(api_thread.api.url)
    t0 = time.perf_counter()
    facts = asyncio.run(gather(client, timeout=30.0))
    t1 = time.perf_counter()
    report = diagnose(facts)
    t2 = time.perf_counter()
    text, doc, page = render_text(report), render_json(report), render_html(report)
    t3 = time.perf_counter()
    client.close()
    assert len(facts.nodes) == nodes, len(facts.nodes)
    return {"gather_s": t1 - t0, "diagnose_s": t2 - t1, "render_s": t3 - t2,
            "html_bytes": len(page.encode()), "json_bytes": len(doc.encode()),
            "text_bytes": len(text.encode()), "findings": len(report.findings)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, nargs="+", default=[1000, 15000])
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    out: dict[str, Any] = {}
    for n in args.nodes:
        api_thread = ApiThread(DoctorKubeApi(keep_requests=False))
        try:
            api_thread.call(populate(api_thread.api, n), timeout=600)  # type: ignore[arg-type]
            runs = [one(n, api_thread) for _ in range(args.runs)]
        finally:
            api_thread.close()
        out[str(n)] = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

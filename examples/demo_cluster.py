"""``make demo``: ``flannel-guard doctor`` on a broken cluster, without a cluster.

Serves an emulated Kubernetes API on 127.0.0.1 (the test suite's, tests/doctor_cluster.py)
holding a cluster broken as the field reports are (../README.md, "What it checks"):

- kube-controller-manager and kubeadm moved to 172.18.0.0/16 while flannel's ``Network`` and
  kube-proxy's ``clusterCIDR`` still say 10.244.0.0/16; every flannel pod crash-loops with
  ``subnet "10.244.0.0/16" specified in the flannel net config doesn't contain ... PodCIDR``;
- two nodes share one podCIDR (a hand patch, flannel#1549), one has a /25 where nodes get /24s;
- ``SubnetLen`` in net-conf.json, which kube mode ignores (flannel#847).

Then runs ``flannel-guard doctor`` and ``doctor --html OUT`` against it, as a user would, and
exits 0 when both ran (doctor's own exit 1 means "findings", which is the point here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from doctor_cluster import DoctorKubeApi, flannel_configmap, flannel_node, flannel_pod  # noqa: E402
from kube_emulator import (  # noqa: E402
    kcm_pod,
    kube_proxy_configmap,
    kubeadm_configmap,
    kubeconfig_file,
)

KLOG = "E1206 09:00:01.123456       1 "
NOT_CONTAINED = ('main.go:343] Error registering network: failed to acquire lease: subnet'
                 ' "10.244.0.0/16" specified in the flannel net config doesn\'t contain "{cidr}" PodCIDR'
                 ' of the "{node}" node')
NODES = {"cp1": "172.18.0.0/24", "worker-1": "172.18.1.0/24", "worker-2": "172.18.2.0/24",
         "worker-3": "172.18.2.0/24", "worker-4": "172.18.4.0/25", "worker-5": "172.18.5.0/24"}


async def broken_cluster(api: DoctorKubeApi) -> None:
    api.put("pods", kcm_pod(cluster_cidr="172.18.0.0/16"))
    api.put("configmaps", kubeadm_configmap("v1beta3", pod_subnet="172.18.0.0/16"))
    api.put("configmaps", kube_proxy_configmap("10.244.0.0/16"))
    net_conf = json.dumps({"Network": "10.244.0.0/16", "SubnetLen": 26, "Backend": {"Type": "vxlan"}},
                          indent=2)
    api.put("configmaps", flannel_configmap(net_conf=net_conf))
    for i, (name, cidr) in enumerate(NODES.items()):
        await api.put_node(flannel_node(name, cidr, flannel_ran=False))
        pod = f"kube-flannel-ds-{i:02d}x7q"
        api.put("pods", flannel_pod(pod, name, ready=False, restarts=7))
        api.logs["kube-flannel", pod] = KLOG + NOT_CONTAINED.format(cidr=cidr, node=name) + "\n"


async def doctor(*args: str, quiet: bool = False) -> int:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "webhook", "doctor", *args,
                                                stdout=asyncio.subprocess.DEVNULL if quiet else None)
    return await proc.wait()


async def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    async with DoctorKubeApi() as api:
        await broken_cluster(api)
        config = kubeconfig_file(out / "kubeconfig", api.url)
        print(f"# an emulated API on {api.url} with a broken cluster; kubeconfig {config}\n", flush=True)
        print(f"$ flannel-guard doctor --kubeconfig {config}", flush=True)
        first = await doctor("--kubeconfig", str(config))
        page = out / "doctor.html"
        print(f"\n$ flannel-guard doctor --kubeconfig {config} -o json --html {page} > /dev/null", flush=True)
        second = await doctor("--kubeconfig", str(config), "--html", str(page), "-o", "json", quiet=True)
    ok = first in (0, 1) and second in (0, 1) and page.is_file()
    if ok:
        print(f"\nopen {page} in a browser (it needs no JavaScript and no network)")
    return 0 if ok else 2


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "demo",
                        help="where the kubeconfig and the HTML page go (default build/demo)")
    sys.exit(asyncio.run(main(parser.parse_args().out)))

"""``make release``: dist/ holds everything an install needs without a clone or a Python environment.

- ``install.yaml``: manifests/ rendered (kubectl kustomize manifests/base), every webhook's
  ``caBundle`` the placeholder ``CA_BUNDLE``; the TLS Secret is made from your own certificate
  (the header says how, with the image's ``flannel-guard certs``): a key is never shipped.
- ``install-cert-manager.yaml``: manifests/overlays/cert-manager rendered: cert-manager issues
  the certificate and injects the CA; nothing to make by hand.
- ``flannel-guard-VERSION.tgz``: the Helm chart, packaged (``helm package``).
- ``flannel-guard-VERSION.oci.tar``: the image archive, when ``make image`` has written it.
- ``SHA256SUMS``: ``sha256sum -c SHA256SUMS`` checks every file above.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = "CA_BUNDLE"

HEADER = """\
# flannel-guard {version}: the manifests of manifests/ (kubectl kustomize manifests/base), one file.
#
# The serving certificate is yours to make (a key is never shipped): with the image,
#   podman load -i flannel-guard-{version}.oci.tar      # or docker load; kind load image-archive
#   mkdir certs && podman run --rm -v "$PWD/certs:/out:Z" {image} \\
#     certs --service flannel-guard --namespace flannel-guard --out /out
# then, in this order:
#   sed "s|{placeholder}|$(base64 -w0 certs/ca.crt)|" install.yaml | kubectl apply -f -
#   kubectl -n flannel-guard create secret generic flannel-guard-tls --type=kubernetes.io/tls \\
#     --from-file=certs/tls.crt --from-file=certs/tls.key --from-file=certs/ca.crt
#   kubectl -n flannel-guard rollout status deployment/flannel-guard
# With cert-manager installed, install-cert-manager.yaml needs none of this.
# The image {image} is not published to a registry: load the archive on each
# control-plane node (the pods run there), or push it to yours and replace the name below.
"""


def run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, check=False, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"make release: {' '.join(args)}: {result.stderr.strip()[:500]}")
    return result.stdout


def version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    sys.exit("make release: no version in pyproject.toml")


def with_placeholder(rendered: str) -> tuple[str, str]:
    """Every webhook's caBundle set to the placeholder; the Deployment's image."""
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    image = ""
    for doc in docs:
        if doc["kind"].endswith("WebhookConfiguration"):
            for hook in doc.get("webhooks", []):
                hook["clientConfig"]["caBundle"] = PLACEHOLDER
        if doc["kind"] == "Deployment":
            image = doc["spec"]["template"]["spec"]["containers"][0]["image"]
    return yaml.safe_dump_all(docs, sort_keys=False), image


def main(dist: Path, kubectl: str, helm: str, archive: Path) -> int:
    v = version()
    if dist.exists():
        shutil.rmtree(dist)
    dist.mkdir(parents=True)
    body, image = with_placeholder(run(kubectl, "kustomize", "manifests/base"))
    (dist / "install.yaml").write_text(HEADER.format(version=v, image=image, placeholder=PLACEHOLDER) + body)
    cm = run(kubectl, "kustomize", "manifests/overlays/cert-manager")
    (dist / "install-cert-manager.yaml").write_text(
        f"# flannel-guard {v} with cert-manager: kubectl apply -f install-cert-manager.yaml\n" + cm)
    run(helm, "package", "charts/flannel-guard", "--destination", str(dist))
    if archive.is_file():
        shutil.copyfile(archive, dist / archive.name)
    files = sorted(p for p in dist.iterdir() if p.is_file())
    sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in files)
    (dist / "SHA256SUMS").write_text(sums)
    for p in [*files, dist / "SHA256SUMS"]:
        print(f"{p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}  {p.stat().st_size} bytes")
    if not archive.is_file():
        print(f"(no {archive.relative_to(ROOT)}: `make image` builds it; dist/ then holds it too)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    parser.add_argument("--kubectl", default=str(ROOT / "tools" / "bin" / "kubectl"))
    parser.add_argument("--helm", default=str(ROOT / "tools" / "bin" / "helm"))
    parser.add_argument("--image-archive", type=Path,
                        default=ROOT / "build" / f"flannel-guard-{version()}.oci.tar")
    a = parser.parse_args()
    sys.exit(main(a.dist, a.kubectl, a.helm, a.image_archive))

"""``make release``: dist/ with everything an install needs, and the files a release carries."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import yaml
from test_helm import HELM, need_tool

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = ROOT / "tools" / "bin" / "kubectl"


def test_make_release_writes_the_manifests_the_chart_the_image_and_their_checksums(tmp_path: Path):
    archive = tmp_path / "flannel-guard-0.1.0.oci.tar"
    archive.write_bytes(b"an OCI archive, as `make image` writes it")
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, str(ROOT / "release" / "make_dist.py"), "--dist", str(dist),
                        "--kubectl", str(need_tool(KUBECTL)), "--helm", str(need_tool(HELM)),
                        "--image-archive", str(archive)],
                       capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in dist.iterdir())
    assert names == ["SHA256SUMS", "flannel-guard-0.1.0.oci.tar", "flannel-guard-0.1.0.tgz",
                     "install-cert-manager.yaml", "install.yaml"]
    sums = dict(reversed(line.split("  ")) for line in (dist / "SHA256SUMS").read_text().splitlines())
    assert sorted(sums) == names[1:]
    for name, digest in sums.items():
        assert hashlib.sha256((dist / name).read_bytes()).hexdigest() == digest

    docs = [d for d in yaml.safe_load_all((dist / "install.yaml").read_text()) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "Deployment", "ValidatingWebhookConfiguration",
            "MutatingWebhookConfiguration"} <= kinds
    hooks = [h for d in docs if d["kind"].endswith("WebhookConfiguration") for h in d["webhooks"]]
    assert hooks and all(h["clientConfig"]["caBundle"] == "CA_BUNDLE" for h in hooks)
    assert "Secret" not in kinds  # no key is shipped: the header says how to make the Secret
    header = (dist / "install.yaml").read_text().split("apiVersion", 1)[0]
    assert "create secret generic flannel-guard-tls" in header and "load -i flannel-guard-0.1.0" in header
    cm = [d for d in yaml.safe_load_all((dist / "install-cert-manager.yaml").read_text()) if d]
    assert "Certificate" in {d["kind"] for d in cm}
    # The packaged chart installs as the one in the tree does.
    t = subprocess.run([str(HELM), "template", "flannel-guard", str(dist / "flannel-guard-0.1.0.tgz"),
                        "-n", "flannel-guard", "--set", "certManager.enabled=true"],
                       capture_output=True, text=True, check=False)
    assert t.returncode == 0 and "kind: Deployment" in t.stdout


def test_the_license_is_apache_2_and_the_changelog_names_the_version():
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    assert hashlib.md5(text.encode()).hexdigest() == "3b83ef96387f14655fc854ddc3c6bd57"  # apache.org's
    assert "## 0.1.0" in (ROOT / "CHANGELOG.md").read_text()

"""Fill plugins/flannel-guard.yaml's sha256 and uri for the archives `make krew` packed.

python plugins/krew_manifest.py OUT ARCHIVE... : each ARCHIVE is
kubectl-flannel_guard-v<version>-<os>-<arch>.tar.gz; the platform of the manifest whose
selector names that os and arch gets the archive's sha256 (and its file name in the uri).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def main(out: str, *archives: str) -> int:
    manifest = yaml.safe_load((ROOT / "plugins" / "flannel-guard.yaml").read_text())
    by_platform = {}
    for archive in map(Path, archives):
        os_name, arch = archive.name.removesuffix(".tar.gz").rsplit("-", 2)[1:]
        by_platform[(os_name, arch)] = archive
    for platform in manifest["spec"]["platforms"]:
        labels = platform["selector"]["matchLabels"]
        archive = by_platform.pop((labels["os"], labels["arch"]))
        platform["sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
        platform["uri"] = platform["uri"].rsplit("/", 1)[0] + "/" + archive.name
    if by_platform:
        raise SystemExit(f"no platform in the manifest for {sorted(by_platform)}")
    Path(out).write_text(yaml.safe_dump(manifest, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

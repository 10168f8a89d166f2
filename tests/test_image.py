"""The image, built for real by ``make image`` (buildah, Debian base from mmdebstrap) and run.

``make image`` writes an OCI archive (image.mk; cached under build/ by its
inputs, so only the first run on a machine takes minutes). These tests read that
archive as any runtime would (index.json, manifest, config, layers with their
whiteouts), unpack the root filesystem, and run the image's own entrypoint
under the image's own user with that root mounted read-only (a private mount
namespace, ``unshare --mount``, then ``chroot --userspec``): what the
Deployment's ``readOnlyRootFilesystem`` and ``runAsNonRoot`` ask of it. The
only writable path is a tmpfs on /tmp (the Deployment's emptyDir); the TLS
pair arrives read-only on /mnt/tls, as a Secret volume would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tarfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kube_emulator import free_port

from webhook.core.constants import NAMESPACE, PORT_IN_CLUSTER, SERVICE
from webhook.service import certs

ROOT = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
ARCHIVE = ROOT / "build" / f"flannel-guard-{VERSION}.oci.tar"
REPO = "ghcr.io/flannel-guard/flannel-guard"
PROBE_PORT_IN_CLUSTER = PORT_IN_CLUSTER + 1

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def archive() -> Path:
    """``make image``: a no-op when the archive is newer than its inputs."""
    if os.geteuid() != 0:
        pytest.fail("building and running the image needs root (buildah, mount namespaces)", pytrace=False)
    result = subprocess.run(["make", "-s", "image"], cwd=ROOT, capture_output=True, text=True,
                            check=False, timeout=3000)
    assert result.returncode == 0, f"make image failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert ARCHIVE.is_file()
    return ARCHIVE


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    algorithm, _, hexdigest = digest.partition(":")
    member = tar.extractfile(f"blobs/{algorithm}/{hexdigest}")
    assert member is not None
    return member.read()


def read_image(archive: Path, architecture: str) -> Obj:
    """index.json, its one entry (an image index), and that architecture's manifest and config."""
    with tarfile.open(archive) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        (entry,) = index["manifests"]
        assert entry["mediaType"] == "application/vnd.oci.image.index.v1+json"
        platforms = json.loads(_blob(tar, entry["digest"]))
        (chosen,) = [m for m in platforms["manifests"]
                     if m["platform"] == {"architecture": architecture, "os": "linux"}]
        manifest = json.loads(_blob(tar, chosen["digest"]))
        config = json.loads(_blob(tar, manifest["config"]["digest"]))
    return {"index": index, "entry": entry, "platforms": platforms, "manifest": manifest, "config": config}


@pytest.fixture(scope="module")
def image(archive: Path) -> Obj:
    return read_image(archive, "amd64")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


def unpack(archive: Path, manifest: Obj, root: Path) -> None:
    """Apply the layers in order, with the OCI image spec's whiteouts (layer.md)."""
    with tarfile.open(archive) as outer:
        for layer in manifest["layers"]:
            assert layer["mediaType"].startswith("application/vnd.oci.image.layer.v1.tar")
            algorithm, _, hexdigest = layer["digest"].partition(":")
            blob = outer.extractfile(f"blobs/{algorithm}/{hexdigest}")
            with tarfile.open(fileobj=blob, mode="r:*") as tar:
                keep = []
                for member in tar:
                    parent, name = os.path.split(member.name)
                    if name == ".wh..wh..opq":  # opaque: the lower layers' children are gone
                        directory = root / parent
                        if directory.is_dir():
                            for child in directory.iterdir():
                                _remove(child)
                    elif name.startswith(".wh."):
                        _remove(root / parent / name[len(".wh."):])
                    else:
                        keep.append(member)
                tar.extractall(root, members=keep, filter="tar")


@pytest.fixture(scope="module")
def rootfs(archive: Path, image: Obj, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("image") / "rootfs"
    root.mkdir()
    unpack(archive, image["manifest"], root)
    yield root
    shutil.rmtree(root)  # ~300 MB unpacked: not kept among pytest's last three runs


def run_in_image(root: Path, config: Obj, argv: list[str], *, tls: Path | None = None,
                 **popen: Any) -> subprocess.Popen[bytes]:
    """The image's process as a runtime starts it: its Env, WorkingDir and User, a read-only root.

    ``argv`` replaces Cmd; the Entrypoint is the image's. In a private mount namespace:
    the root bind-mounted read-only, /proc, /dev, a tmpfs on /tmp, ``tls`` read-only on
    /mnt/tls; then ``chroot --userspec`` (no shell inside the image is needed).
    """
    cfg = config["config"]
    user = cfg["User"]
    script = (
        'set -e; R="$FG_ROOT"\n'
        'mount --bind "$R" "$R"; mount -o remount,bind,ro "$R"\n'
        'mount -t proc proc "$R/proc"; mount --rbind /dev "$R/dev"\n'
        'mount -t tmpfs -o size=16m,mode=1777 tmpfs "$R/tmp"\n'
        'if [ -n "$FG_TLS" ]; then mkdir -p "$R/mnt" 2>/dev/null || true;'
        ' mount --bind "$FG_TLS" "$R/mnt"; mount -o remount,bind,ro "$R/mnt"; fi\n'
        'cd "$R"\n'
        'exec env -i "$@"'
    )
    chroot = shutil.which("chroot")
    assert chroot, "chroot (coreutils) missing"
    command = ["unshare", "--mount", "--fork", "--kill-child", "--", "sh", "-c", script, "sh",
               *cfg.get("Env", []), chroot, f"--userspec={user}", str(root),
               *cfg["Entrypoint"], *argv]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FG_ROOT": str(root),
           "FG_TLS": str(tls) if tls else ""}
    return subprocess.Popen(command, env=env, **popen)


def child_of(pid: int) -> int:
    """The process ``unshare --fork`` started (its only child)."""
    deadline = time.monotonic() + 60
    while True:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        assert time.monotonic() < deadline, "unshare started no child"
        time.sleep(0.02)


def test_the_archive_names_the_image_the_manifests_pull(image: Obj) -> None:
    ref = image["entry"]["annotations"]["org.opencontainers.image.ref.name"]
    assert ref == f"{REPO}:{VERSION}"
    kustomization = yaml.safe_load((ROOT / "manifests" / "base" / "kustomization.yaml").read_text())
    assert {"name": REPO, "newTag": VERSION} in kustomization["images"]
    assert image["manifest"]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert [m["platform"]["architecture"] for m in image["platforms"]["manifests"]] == ["amd64", "arm64"]


@pytest.mark.parametrize("architecture", ["amd64", "arm64"])
def test_config_runs_the_cli_as_numeric_non_root(archive: Path, architecture: str) -> None:
    config = read_image(archive, architecture)["config"]
    cfg = config["config"]
    assert cfg["User"] == "65532:65532"
    assert cfg["Entrypoint"] == ["flannel-guard"]
    assert cfg["Cmd"] == ["serve", "--in-cluster"]
    assert {f"{PORT_IN_CLUSTER}/tcp", f"{PROBE_PORT_IN_CLUSTER}/tcp"} <= set(cfg["ExposedPorts"])
    assert cfg["Env"][0].startswith("PATH=/opt/venv/bin:")
    assert config["os"] == "linux" and config["architecture"] == architecture


def test_the_root_filesystem_has_no_shell_no_pip_and_no_keys(rootfs: Path) -> None:
    assert not (rootfs / "usr/bin/sh").exists() and not (rootfs / "bin/sh").exists()
    assert not list((rootfs / "opt/venv").rglob("pip/__init__.py"))
    assert not (rootfs / "wheels").exists()  # the build stage's wheels stay there
    assert not [p for p in rootfs.rglob("*.key") if p.is_file()]
    assert (rootfs / "opt/venv/bin/flannel-guard").is_file()


def test_entrypoint_prints_the_version(rootfs: Path, image: Obj) -> None:
    proc = run_in_image(rootfs, image["config"], ["--version"], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert out.decode().strip() == f"flannel-guard {VERSION}"


def test_the_image_user_cannot_write_its_root(rootfs: Path, image: Obj) -> None:
    """What the server would meet if it tried: EROFS on /, a writable /tmp, uid 65532."""
    cfg = {**image["config"], "config": {**image["config"]["config"], "Entrypoint": ["python3"]}}
    probe = ("import os\ntry:\n open('/probe','w')\nexcept OSError as e:\n print(e.errno)\n"
             "open('/tmp/x','w').write('ok')\nprint(os.getuid(), os.getgid())")
    proc = run_in_image(rootfs, cfg, ["-c", probe], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert out.decode().split() == ["30", "65532", "65532"]  # 30: EROFS


@contextlib.contextmanager
def serving(rootfs: Path, image: Obj, tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, int, Path]]:
    tls = tmp / "tls"
    tls.mkdir()
    certs.write_bundle(certs.generate(SERVICE, NAMESPACE, days=1, extra_ips=["127.0.0.1"]), tls)
    # As the Secret volume with defaultMode 0440 and fsGroup 65532.
    tls.chmod(0o755)
    for f in tls.iterdir():
        os.chown(f, 0, 65532)
        f.chmod(0o440)
    port, probe_port = free_port(), free_port()
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = run_in_image(rootfs, image["config"], [
            "serve", "--standalone", "--host", "127.0.0.1", "--port", str(port),
            "--probe-port", str(probe_port), "--tls-cert", "/mnt/tls.crt", "--tls-key", "/mnt/tls.key"],
            tls=tls, stdout=subprocess.DEVNULL, stderr=out)
    try:
        yield proc, port, probe_port, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_serve_answers_healthz_as_non_root_on_a_read_only_root(
        rootfs: Path, image: Obj, tmp_path: Path) -> None:
    with serving(rootfs, image, tmp_path) as (proc, port, probe_port, log):
        ctx = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.crt"))
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"https://127.0.0.1:{port}/healthz", verify=ctx, timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the image's server never answered /healthz"
            time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{probe_port}/healthz", timeout=5).text == "ok"
        metrics = httpx.get(f"http://127.0.0.1:{probe_port}/metrics", timeout=5).text
        assert 'flannel_guard_build_info{python_version="3.11.' in metrics
        assert f'version="{VERSION}"' in metrics

        server = child_of(proc.pid)
        status = dict(line.split(":", 1) for line in Path(f"/proc/{server}/status").read_text().splitlines())
        assert status["Uid"].split()[:2] == ["65532", "65532"]
        assert status["Gid"].split()[:2] == ["65532", "65532"]
        assert Path(f"/proc/{server}/root").resolve() == rootfs.resolve()
        # Its "/" is a read-only mount (mountinfo: mount point, then the per-mount options).
        mounts = [line.split() for line in Path(f"/proc/{server}/mountinfo").read_text().splitlines()]
        (root_mount,) = [m for m in mounts if m[4] == "/"]
        assert "ro" in root_mount[5].split(",")

        # SIGTERM: a clean stop, exit 0 (what the kubelet sends).
        os.kill(server, signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]


def test_a_container_tool_loads_the_archive_under_its_name(archive: Path, tmp_path: Path) -> None:
    """buildah reads it with containers/image, the library podman's `load` uses too."""
    storage = ["buildah", "--root", str(tmp_path / "storage"), "--runroot", str(tmp_path / "run"),
               "--storage-driver", "vfs"]
    pulled = subprocess.run([*storage, "pull", "--quiet", f"oci-archive:{archive}"],
                            capture_output=True, text=True, check=False, timeout=600)
    assert pulled.returncode == 0, pulled.stderr
    listed = subprocess.run([*storage, "images", "--format", "{{.Name}}:{{.Tag}}"],
                            capture_output=True, text=True, check=True, timeout=120)
    assert f"{REPO}:{VERSION}" in listed.stdout.split()
    inspected = json.loads(subprocess.run([*storage, "inspect", "--type", "image", f"{REPO}:{VERSION}"],
                                          capture_output=True, text=True, check=True, timeout=120).stdout)
    assert inspected["OCIv1"]["config"]["User"] == "65532:65532"


# --- linux/arm64: run under qemu user-mode emulation, `-L` on the image's root (no binfmt_misc)

@pytest.fixture(scope="module")
def arm64_rootfs(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Obj]]:
    image = read_image(archive, "arm64")
    root = tmp_path_factory.mktemp("image-arm64") / "rootfs"
    root.mkdir()
    unpack(archive, image["manifest"], root)
    yield root, image["config"]
    shutil.rmtree(root)


def run_arm64(root: Path, config: Obj, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """The Entrypoint looked up on the image's PATH, its shebang's interpreter run by qemu.

    qemu opens every path under ``-L`` first, so the interpreter finds its venv
    (``-0`` gives it the argv[0] the kernel would have) and its standard library
    in the image; anything absent there (the fixtures) is read from this machine.
    """
    qemu = shutil.which("qemu-aarch64-static")
    assert qemu, "qemu-aarch64-static (Debian's qemu-user-static) missing: make debs"
    env = dict(e.split("=", 1) for e in config["config"]["Env"])
    (entry,) = config["config"]["Entrypoint"]
    script = next(f"{d}/{entry}" for d in env["PATH"].split(":") if (root / d.lstrip("/") / entry).is_file())
    interpreter = (root / script.lstrip("/")).read_text().splitlines()[0].removeprefix("#!").strip()
    binary = (root / interpreter.lstrip("/")).resolve()
    if not binary.is_relative_to(root):  # an absolute symlink: resolve it inside the root
        target = os.readlink(root / interpreter.lstrip("/"))
        binary = root / target.lstrip("/")
    result = subprocess.run([qemu, "-L", str(root), "-0", interpreter, str(binary), script, *argv],
                            env={**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                            capture_output=True, text=True, check=False, timeout=300)
    return result


def test_the_arm64_root_is_arm64_and_has_no_shell(arm64_rootfs: tuple[Path, Obj]) -> None:
    root, _ = arm64_rootfs
    assert not (root / "usr/bin/sh").exists() and not (root / "usr/bin/dash").exists()
    elf = (root / "usr/bin/python3.11").read_bytes()[:20]
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64
    so = next((root / "opt/venv/lib/python3.11/site-packages/pydantic_core").glob("*.so"))
    assert so.name.endswith("-aarch64-linux-gnu.so")


def test_the_arm64_entrypoint_prints_the_version(arm64_rootfs: tuple[Path, Obj]) -> None:
    result = run_arm64(*arm64_rootfs, ["--version"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"flannel-guard {VERSION}"


def test_the_arm64_entrypoint_checks_a_manifest(arm64_rootfs: tuple[Path, Obj], tmp_path: Path) -> None:
    fixture = ROOT / "tests" / "fixtures" / "kube-flannel-cfg.yaml"
    good = run_arm64(*arm64_rootfs, ["check", "--cluster-cidr", "10.244.0.0/16", "--arch", "arm64",
                                     str(fixture)])
    assert good.returncode == 0, good.stdout + good.stderr[-2000:]
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(fixture.read_text().replace("10.244.0.0/16", "10.99.0.0/16"))
    bad = run_arm64(*arm64_rootfs, ["check", "--cluster-cidr", "10.244.0.0/16", "--output", "json",
                                    str(wrong)])
    assert bad.returncode != 0, bad.stdout
    assert "10.99.0.0/16" in bad.stdout

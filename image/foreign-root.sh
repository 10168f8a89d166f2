#!/bin/sh
# image/foreign-root.sh ARCH BASE_TAR WHEELS OUT_TAR: the root filesystem of the image for a
# foreign architecture (arm64), made without executing anything of that architecture: binfmt_misc
# is not mounted on the build machines and is left alone. What the Dockerfile's two stages do,
# done from the outside (see image.mk):
#
#   BASE_TAR   mmdebstrap --arch=ARCH --variant=extract: Debian's packages unpacked, no
#              maintainer script run (none is needed for python3: its symlinks ship in the
#              packages; the byte-compilation its postinst would do is done here)
#   WHEELS     wheels for ARCH (pip download --platform), installed by this machine's pip with
#              --platform/--only-binary/--target into a venv laid out as `python3 -m venv` does
#   OUT_TAR    one layer: the root with the venv, without a shell or coreutils, as the
#              Dockerfile's runtime stage leaves it
set -eu
arch=$1 base=$2 wheels=$3 out=$4
case $arch in arm64) machine=aarch64 ;; *) echo "no platform for $arch" >&2; exit 2 ;; esac
# pip (23) takes the platforms one by one: every manylinux glibc up to Debian 12's 2.36.
platforms=$(for v in $(seq 36 -1 17); do printf ' --platform manylinux_2_%s_%s' "$v" "$machine"; done)
platforms="$platforms --platform manylinux2014_$machine"
host_python=${HOST_PYTHON:-python3}
root=$(mktemp -d "${out}.root.XXXXXX")
trap 'rm -rf "$root"' EXIT
tar -xf "$base" -C "$root" --numeric-owner
pyver=$(cd "$root/usr/bin" && ls python3.* | sed -n 's/^python\(3\.[0-9]*\)$/\1/p' | head -n1)
test -n "$pyver" || { echo "no python3.X in $base" >&2; exit 1; }
site="$root/opt/venv/lib/python$pyver/site-packages"
mkdir -p "$site" "$root/opt/venv/bin" "$root/tmp" "$root/proc" "$root/dev" "$root/mnt"
chmod 1777 "$root/tmp"
"$host_python" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$wheels" \
    $platforms --python-version "$pyver" --implementation cp --abi "cp${pyver%.*}${pyver#*.}" \
    --abi abi3 --abi none --only-binary=:all: \
    --no-compile --target "$site" -c constraints.txt flannel-guard
rm -rf "$site/bin"  # --target's scripts name this machine's interpreter; written below instead
ln -s "/usr/bin/python$pyver" "$root/opt/venv/bin/python"
ln -s python "$root/opt/venv/bin/python3"
ln -s python "$root/opt/venv/bin/python$pyver"
printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = %s\n' "$pyver" \
    > "$root/opt/venv/pyvenv.cfg"
printf '#!/opt/venv/bin/python\nimport sys\nfrom webhook.cli import main\nif __name__ == "__main__":\n    sys.exit(main())\n' \
    > "$root/opt/venv/bin/flannel-guard"
chmod 755 "$root/opt/venv/bin/flannel-guard"
# Bytecode is the same on every architecture: compiled by this machine's interpreter of the same
# minor version, checked by hash only (the root is read-only at run time).
"$host_python" -c "import sys; assert sys.version.startswith('$pyver.'), sys.version"
"$host_python" -m compileall -q --invalidation-mode unchecked-hash -s "$root" -p / "$root/opt/venv"
# The standard library too (its postinst would have); a few of its test files do not compile.
"$host_python" -m compileall -q --invalidation-mode unchecked-hash -s "$root" -p / \
    "$root/usr/lib/python$pyver" >/dev/null || true
# The runtime stage: no shell, package manager or coreutils; /var/lib/dpkg stays for scanners.
find "$root/usr/sbin" "$root/usr/bin" -mindepth 1 ! -name 'python*' -delete
tar -C "$root" --numeric-owner --sort=name -cf "$out.tmp" .
mv -f "$out.tmp" "$out"

# flannel-guard image. `make image` builds it with buildah and writes an OCI archive
# (build/flannel-guard-<version>.oci.tar); see README.md "The image".
# Linted by tests/test_manifests.py (hadolint) and built and run by tests/test_image.py.
#
# The build needs no package index: the Python packages come as wheels built
# beforehand into build/wheels/ (`make wheels`: pip wheel -c constraints.txt,
# plus pip's own wheel, which installs them).
#
# BASE: any Debian 12 based image with Python 3.11 (the wheels are cp311,
# manylinux). The default is the official slim image; `make image` passes a base
# made from Debian's own packages with mmdebstrap (python3 from bookworm), for
# machines that cannot pull from an image registry. Build and runtime stages use
# the same base, so the venv's interpreter symlink resolves in both.
ARG BASE=python:3.11.14-slim-bookworm

# --- build: a virtual environment with the package and its pinned dependencies
FROM ${BASE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

COPY constraints.txt /wheels/constraints.txt
COPY build/wheels/ /wheels/
# No pip in the venv: pip runs from its own wheel (a wheel is a zip Python can run).
# Bytecode compiled here, checked by hash only: the root filesystem is read-only
# at run time, so nothing could be cached there, and start-up stays fast.
RUN set -- /wheels/pip-*.whl \
 && python3 -m venv --without-pip /opt/venv \
 && /opt/venv/bin/python "$1/pip" install --no-index --find-links /wheels \
        --no-cache-dir --no-compile -c /wheels/constraints.txt flannel-guard \
 && /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/venv

# --- runtime: the interpreter, its shared libraries and the venv, nothing else
FROM ${BASE}

COPY --from=build /opt/venv /opt/venv

# No shell, package manager or coreutils: the service runs the interpreter
# only (ENTRYPOINT is exec form, the console script's shebang is the venv's
# python). Removed last, by a command that no longer needs them afterwards.
# /var/lib/dpkg stays so that image scanners can still list the packages.
# (python:slim keeps its interpreter in /usr/local/bin, Debian's python3 in /usr/bin.)
RUN rm -rf /usr/local/lib/python3.11/site-packages/pip* \
           /usr/local/lib/python3.11/ensurepip \
 && find /usr/local/bin /usr/sbin /usr/bin -mindepth 1 ! -name 'python*' -delete

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

# Numeric, so that the kubelet can check runAsNonRoot without /etc/passwd.
USER 65532:65532

# 9643 HTTPS: the admission webhooks (and /healthz, /readyz, /metrics).
# 9644 plain HTTP (--probe-port): /healthz, /readyz, /metrics for the kubelet and Prometheus.
EXPOSE 9643 9644

ENTRYPOINT ["flannel-guard"]
CMD ["serve", "--in-cluster"]

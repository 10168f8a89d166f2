# flannel-guard image: `docker build -t ghcr.io/flannel-guard/flannel-guard:0.1.0 .`
# Linted by tests/test_manifests.py (hadolint; there is no Docker engine in CI).

# --- build: a virtual environment with the package and its pinned dependencies
FROM python:3.11.14-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Dependencies first (constraints.txt pins every one), so that a change to the
# code alone reuses this layer's downloads.
COPY pyproject.toml constraints.txt README.md ./
COPY webhook ./webhook
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt . \
 && /opt/venv/bin/pip uninstall --yes pip \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# --- runtime: the interpreter, its shared libraries and the venv, nothing else
FROM python:3.11.14-slim-bookworm

# The same base image as the build stage, so the venv's python symlink
# (/opt/venv/bin/python -> /usr/local/bin/python3.11) resolves.
COPY --from=build /opt/venv /opt/venv

# No shell, package manager or coreutils: the service runs the interpreter
# only (ENTRYPOINT is exec form, the console script's shebang is the venv's
# python). Removed last, by a command that no longer needs them afterwards.
# /var/lib/dpkg stays so that image scanners can still list the packages.
RUN rm -rf /usr/local/lib/python3.11/site-packages/pip* \
           /usr/local/lib/python3.11/ensurepip \
 && find /usr/local/bin -mindepth 1 ! -name 'python*' -delete \
 && find /usr/sbin /usr/bin -mindepth 1 -delete

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

# Numeric, so that the kubelet can check runAsNonRoot without /etc/passwd.
USER 65532:65532

# HTTPS: admission webhooks, /healthz, /readyz, /metrics (manifests/).
EXPOSE 9643

ENTRYPOINT ["flannel-guard"]
CMD ["serve", "--in-cluster"]

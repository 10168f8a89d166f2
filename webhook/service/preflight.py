"""Checks ``serve`` makes before it starts, so that an unusable environment is one line and exit 2.

uvicorn reports a port it cannot bind with a log line and exit 3, after the start-up logs; the
operator then reads a JSON log for what one sentence says.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from pathlib import Path

__all__ = ["api_problem", "port_problem", "serve_problem"]


def serve_problem(host: str, ports: Iterable[int | None],
                  api: tuple[Path | None, bool] | None) -> str | None:
    """The first reason ``serve`` cannot start: a port it cannot listen on, then (``api``:
    ``(kubeconfig, in_cluster)``, None in standalone mode) an API client it cannot make."""
    for port in ports:
        problem = port_problem(host, port) if port else None
        if problem is not None:
            return problem
    if api is not None:
        problem = api_problem(*api)
        if problem is not None:
            return f"cannot reach the Kubernetes API: {problem}"
    return None


def api_problem(kubeconfig: Path | None, in_cluster: bool) -> str | None:
    """Why no API client can be made from these flags (one line), or None."""
    from webhook.kube.cluster import api_client

    try:
        api_client(kubeconfig, in_cluster).close()
    except Exception as e:  # kubernetes.config raises ConfigException, OSError, yaml and key errors
        where = "--in-cluster: not in a pod" if in_cluster else f"--kubeconfig {kubeconfig}"
        return f"{where}: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return None


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on now (one line), or None.

    Bound the way uvicorn binds (SO_REUSEADDR, so a port in TIME_WAIT is fine) and closed at once:
    a process that takes the port in between still gets uvicorn's own message.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return f"{host}:{port} is already in use (another flannel-guard, or --port/--probe-port)"
            return f"cannot listen on {host}:{port}: {e.strerror or e}"
    return None

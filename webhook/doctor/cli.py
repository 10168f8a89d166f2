"""``flannel-guard doctor``'s command line: parse, gather, diagnose, print (and ``--html FILE``).

Importing this module does not load the Kubernetes client: ``gather`` is imported
when the command runs, so ``flannel-guard check`` stays light.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from webhook.core.cidr import CidrError, parse_cidr_list
from webhook.core.constants import FLANNEL_CONFIGMAPS, NAMESPACE

#: doctor's exit code for a cluster it cannot read (as webhook.doctor.report's, not imported here).
EXIT_UNREADABLE = 2

__all__ = ["add_parser", "main", "run"]

DEFAULT_FLANNEL_CONFIGMAPS = tuple(f"{ns}/{name}" for ns, name in FLANNEL_CONFIGMAPS)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``doctor`` to a ``flannel-guard`` command line."""
    p = subparsers.add_parser(
        "doctor", help="diagnose a live cluster, read-only (exit 0 healthy, 1 findings, 2 unreadable)",
        description="Read the cluster-cidr sources, kube-controller-manager's allocation, the flannel"
                    " ConfigMaps, every Node's podCIDRs and flannel annotations, the flannel pods and their"
                    " logs, the kubelet's sandbox events and flannel-guard itself; print what is wrong and"
                    " the exact fix. Changes nothing.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--kubeconfig", type=Path, default=None,
                     help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    src.add_argument("--in-cluster", action="store_true", help="use the pod's service account")
    p.add_argument("--output", "-o", choices=["text", "json"], default="text",
                   help="text (default): the findings, root cause first, with their fixes; json: the"
                        " same report as one document")
    p.add_argument("--html", type=Path, default=None, metavar="FILE",
                   help="also write the report as one self-contained HTML page (readable without"
                        " JavaScript), with the address space drawn as a grid of node blocks")
    from webhook.control.settings import load_environment  # validated FLANNEL_GUARD_* variables

    p.add_argument("--cluster-cidr", default=load_environment().cluster_cidr,
                   metavar="CIDR[,CIDR]",
                   help="the cluster-cidr to check against, overriding every source (one CIDR or IPv4,IPv6)")
    p.add_argument("--flannel-configmap", action="append", metavar="NAMESPACE/NAME",
                   help="a flannel ConfigMap to read (repeatable; default "
                        + ", ".join(DEFAULT_FLANNEL_CONFIGMAPS)
                        + "); flannel pods are looked for in the same namespaces")
    p.add_argument("--guard-namespace", default=NAMESPACE, metavar="NAMESPACE",
                   help=f"namespace flannel-guard is installed in (default {NAMESPACE})")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds for each API call (default 5)")


def _configmaps(items: Sequence[str] | None) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for item in items or DEFAULT_FLANNEL_CONFIGMAPS:
        ns, sep, name = item.partition("/")
        if not sep or not ns or not name or "/" in name:
            raise ValueError(f"--flannel-configmap {item!r}: expected NAMESPACE/NAME")
        pairs.append((ns, name))
    return tuple(dict.fromkeys(pairs))


def _unreadable(args: argparse.Namespace, message: str) -> int:
    import json

    print(f"flannel-guard doctor: cannot read the cluster: {message}", file=sys.stderr)
    if args.output == "json":
        print(json.dumps({"healthy": False, "exitCode": EXIT_UNREADABLE, "error": message}, indent=2))
    return EXIT_UNREADABLE


def _unwritable(path: Path) -> str:
    """Why ``path`` cannot be written (empty: it can), found before anything is read."""
    import os

    if path.is_dir():
        return "is a directory"
    if path.exists():
        return "" if os.access(path, os.W_OK) else "not writable"
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return f"no directory {parent}"
    return "" if os.access(parent, os.W_OK | os.X_OK) else f"directory {parent} is not writable"


def _cluster_name(args: argparse.Namespace) -> str:
    """The kubeconfig's current context (and its cluster), or "in-cluster": what the page names."""
    if args.in_cluster:
        return "in-cluster (service account)"
    try:
        import kubernetes.config

        _, active = kubernetes.config.list_kube_config_contexts(
            config_file=str(args.kubeconfig) if args.kubeconfig else None)
    except Exception:  # the report was read: a name that cannot be told is no reason to fail
        return ""
    name = str(active.get("name", ""))
    cluster = str((active.get("context") or {}).get("cluster", ""))
    return f"{name} (cluster {cluster})" if cluster and cluster != name else name


def run(args: argparse.Namespace) -> int:
    """Run ``doctor`` with parsed arguments; print the report; return the exit code."""
    import asyncio  # here, not at import: ``flannel-guard check`` never needs it

    if args.cluster_cidr:
        try:
            parse_cidr_list(args.cluster_cidr)
        except CidrError as e:
            print(f"flannel-guard doctor: --cluster-cidr: {e}", file=sys.stderr)
            return EXIT_UNREADABLE
    try:
        configmaps = _configmaps(args.flannel_configmap)
    except ValueError as e:
        print(f"flannel-guard doctor: {e}", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.html is not None:
        problem = _unwritable(args.html)
        if problem:  # before a minute of reading the cluster and the whole report printed
            print(f"flannel-guard doctor: --html {args.html}: {problem}", file=sys.stderr)
            return EXIT_UNREADABLE
    from webhook.doctor.collect import ClusterUnreadable, gather
    from webhook.doctor.diagnosis import diagnose
    from webhook.doctor.html_report import render_html
    from webhook.doctor.json_report import render_json
    from webhook.doctor.text_report import render_text
    from webhook.kube.cluster import api_client

    try:
        api = api_client(args.kubeconfig, args.in_cluster)
    except Exception as e:  # kubernetes.config raises ConfigException, OSError, yaml and key errors
        why = " ".join(str(e).split())[:200]
        return _unreadable(args, f"no usable kubeconfig ({type(e).__name__}: {why})")
    try:
        facts = asyncio.run(gather(api, args.cluster_cidr, timeout=args.timeout,
                                   flannel_configmaps=configmaps, guard_namespace=args.guard_namespace))
    except ClusterUnreadable as e:
        return _unreadable(args, str(e))
    finally:
        api.close()
    report = diagnose(facts)
    print(render_json(report) if args.output == "json" else render_text(report))
    if args.html is not None:
        try:
            args.html.write_text(render_html(report, cluster=_cluster_name(args)), encoding="utf-8")
        except OSError as e:
            print(f"flannel-guard doctor: --html {args.html}: {e.strerror or e}", file=sys.stderr)
            return EXIT_UNREADABLE
        print(f"flannel-guard doctor: wrote the HTML report to {args.html.resolve()}", file=sys.stderr)
    return report.exit_code


def main(argv: Sequence[str]) -> int:
    """``flannel-guard doctor ...`` on its own parser (tests; the real CLI wires :func:`add_parser`)."""
    parser = argparse.ArgumentParser(prog="flannel-guard")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))

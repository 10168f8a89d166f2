"""``flannel-guard serve | check | certs``: the command line (``python -m webhook`` is the same).

Every flag of ``serve`` also reads ``FLANNEL_GUARD_<FLAG>`` from the environment
(e.g. ``FLANNEL_GUARD_CLUSTER_CIDR``); a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from webhook import __version__
from webhook.control.settings import DEFAULT_CLUSTER_CIDR, EnvironmentError_, Settings, load_environment
from webhook.core.cidr import CidrError, parse_cidr_list
from webhook.core.constants import FLANNEL_CONFIGMAPS, NAMESPACE, SERVICE
from webhook.core.rules import Mode, NetworkMatch, RuleSettings, Severity
from webhook.doctor.cli import add_parser as add_doctor_parser

__all__ = ["main"]

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad flag or variable: one line on standard error, exit 2."""


# Every FLANNEL_GUARD_* variable, typed and validated (webhook.control.settings, pydantic-settings):
# the flags' defaults. Set by main() before the parser is built.
ENV: Any = None


def _dumps(event: dict[str, Any], **kw: Any) -> bytes:
    """One log line's JSON: orjson, or the standard library for what orjson refuses (a 65-bit int)."""
    import orjson

    try:
        return orjson.dumps(event, default=kw.get("default"))
    except TypeError:
        return json.dumps(event, **kw).encode()


_LEVEL_NAMES = {"warn": "warning", "exception": "error"}  # as structlog's add_log_level names them
_stamp_second: tuple[int, str] = (0, "")


def _utc_stamp(now: float | None = None) -> str:
    """Now as ISO 8601 UTC with microseconds (``2026-12-02T15:27:26.023388Z``); the seconds part is kept."""
    global _stamp_second
    if now is None:
        now = time.time()
    second = int(now)
    kept = _stamp_second
    if kept[0] != second:  # threads log too: the pair is replaced whole, never half-written
        kept = _stamp_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{kept[1]}.{min(999999, int((now - second) * 1e6)):06d}Z"


def _render(logger: Any, method: str, event: dict[str, Any]) -> bytes:
    """One processor for every line: the traceback if any, level and timestamp, then the JSON.

    The same fields structlog's format_exc_info, add_log_level, TimeStamper(fmt="iso",
    utc=True) and JSONRenderer give, in one call instead of four: the admission line is
    written once per review (7.4 -> 5.1 us, bench/RESULTS.md, issue 16).
    """
    if "exc_info" in event:
        import structlog

        event = structlog.processors.format_exc_info(logger, method, event)
    event["level"] = _LEVEL_NAMES.get(method, method)
    event["timestamp"] = _utc_stamp()
    return _dumps(event)


def configure_logging(level: str = "info") -> None:
    """JSON logs, one line per event, on standard error; stdlib loggers rendered the same way."""
    import structlog  # here: ``check`` and ``certs`` print plain text and need none of it

    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        # orjson and bytes straight to the stream: 34 -> 13 -> 5 µs per admission line (issue 16).
        processors=[_render],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.BytesLoggerFactory(file=sys.stderr.buffer),
        cache_logger_on_first_use=True,
    )
    # Libraries (and webhook.service.certs) log through the standard library: same JSON lines.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer()],
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           timestamper, structlog.processors.format_exc_info],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)


SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def env_default_pod_namespace() -> str:
    """``POD_NAMESPACE`` (downward API), else the service account's namespace file, else ours."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SA_NAMESPACE_FILE.read_text().strip() or NAMESPACE
    except OSError:
        return NAMESPACE


def _arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _rule_args(p: argparse.ArgumentParser, *, offline: bool = False) -> None:
    p.add_argument("--cluster-cidr", default=ENV.cluster_cidr, metavar="CIDR[,CIDR]",
                   help="the cluster's pod CIDR, or an IPv4,IPv6 pair (env FLANNEL_GUARD_CLUSTER_CIDR)")
    p.add_argument("--node-cidr-mask-size", "--node-cidr-mask-size-ipv4", dest="mask_v4", type=int,
                   metavar="N",
                   default=ENV.node_cidr_mask_size,
                   help="prefix length of each node's IPv4 podCIDR (default 24, as kube-controller-manager's)"
                   if offline else
                   "prefix length of each node's IPv4 podCIDR (default: kube-controller-manager's"
                   " flag when it can be read, else 24)")
    p.add_argument("--node-cidr-mask-size-ipv6", dest="mask_v6", type=int, metavar="N",
                   default=ENV.node_cidr_mask_size_ipv6,
                   help="prefix length of each node's IPv6 podCIDR (default 64)" if offline else
                   "prefix length of each node's IPv6 podCIDR (default: as for IPv4, else 64)")
    p.add_argument("--network-match", choices=[m.value for m in NetworkMatch],
                   default=ENV.network_match,
                   help="flannel Network must equal the cluster-cidr (exact, default) or contain it")
    p.add_argument("--flannel-configmap", action="append", metavar="NAMESPACE/NAME",
                   help="a guarded flannel ConfigMap (repeatable; default "
                        + ", ".join(f"{ns}/{name}" for ns, name in FLANNEL_CONFIGMAPS) + ")")
    p.add_argument("--arch", default=ENV.arch or _arch(),
                   help="architecture flannel runs on, for backends that exist only on some (udp)")


def _rule_settings(args: argparse.Namespace, unknown: Severity) -> RuleSettings:
    names = RuleSettings().flannel_configmaps
    if args.flannel_configmap:
        pairs = set()
        for item in args.flannel_configmap:
            ns, sep, name = item.partition("/")
            if not sep or not ns or not name:
                raise UsageError(f"--flannel-configmap {item[:80]!r}: expected NAMESPACE/NAME")
            pairs.add((ns, name))
        names = frozenset(pairs)
    return RuleSettings(flannel_configmaps=names, network_match=NetworkMatch(args.network_match),
                        unknown_cidr=unknown, arch=args.arch)


def _parser() -> argparse.ArgumentParser:
    global ENV
    if ENV is None:
        ENV = load_environment()
    parser = argparse.ArgumentParser(
        prog="flannel-guard",
        description="Admission webhook and tools that keep flannel's net-conf.json and Node"
                    " podCIDRs consistent with the cluster-cidr.",
    )
    parser.add_argument("--version", action="version", version=f"flannel-guard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the admission webhook over HTTPS")
    _rule_args(serve)
    serve.add_argument("--mode", choices=[m.value for m in Mode],
                       default=ENV.mode,
                       help="enforce: deny what is wrong; warn: admit with warnings")
    serve.add_argument("--host", default=ENV.host,
                       help=f"address to listen on for HTTPS (default {ENV.host}; 0.0.0.0 or :: for all)")
    serve.add_argument("--port", type=int, default=ENV.port,
                       help=f"HTTPS port of /validate, /mutate and the probes (default {ENV.port})")
    serve.add_argument("--probe-port", type=int, default=ENV.probe_port,
                       help="also serve /healthz, /readyz and /metrics over plain HTTP on this port"
                            " (no client certificate asked: for the kubelet and Prometheus; 0: off)")
    serve.add_argument("--tls-cert", type=Path, default=ENV.tls_cert, metavar="FILE",
                       help="serving certificate, PEM (with its chain); reloaded when it changes")
    serve.add_argument("--tls-key", type=Path, default=ENV.tls_key, metavar="FILE",
                       help="private key of --tls-cert, PEM, unencrypted")
    serve.add_argument("--client-ca", type=Path, default=ENV.client_ca,
                       help="only answer callers with a client certificate signed by this CA")
    src = serve.add_mutually_exclusive_group()
    src.add_argument("--standalone", action="store_true",
                     help="no Kubernetes API: demo/test mode; the node index holds admitted Nodes")
    src.add_argument("--in-cluster", action="store_true", help="use the pod's service account")
    src.add_argument("--kubeconfig", type=Path, default=None, metavar="FILE",
                     help="kubeconfig file to reach the API with (outside a pod)")
    serve.add_argument("--log-level", default=ENV.log_level, choices=["debug", "info", "warning", "error"],
                       help="JSON log lines on standard error from this level up (default info)")
    serve.add_argument("--allocate", choices=["on", "off"], default=ENV.allocate,
                       help="mutating: give Nodes without a podCIDR a free one (default on)")
    serve.add_argument("--on-reservation-failure", choices=["admit", "deny"],
                       default=ENV.on_reservation_failure,
                       help="when the reservation cannot be written: admit the Node without a podCIDR"
                            " (default, never blocks registration) or deny it")
    serve.add_argument("--on-claim-failure", choices=["deny", "admit"],
                       default=ENV.on_claim_failure,
                       help="when the claim of a podCIDR being written cannot be stored: deny the write"
                            " (default: the writer retries; a duplicate is never admitted) or admit it"
                            " with a warning")
    serve.add_argument("--leader-lease-duration", type=int,
                       default=ENV.leader_lease_duration,
                       help="seconds a leader of the assigning loop holds its Lease without renewing it"
                            " (default 15; the other replica takes over after that)")
    serve.add_argument("--reservation-grace", type=float,
                       default=ENV.reservation_grace,
                       help="seconds before a reservation is reclaimed (default 600)")
    serve.add_argument("--fix-network", action="store_true",
                       default=ENV.fix_network,
                       help="mutating: correct a flannel ConfigMap's Network to the cluster-cidr")
    serve.add_argument("--cert-reload-interval", type=float,
                       default=ENV.cert_reload_interval,
                       help="seconds between checks of --tls-cert/--tls-key for a rotated pair"
                            " (default 10)")
    serve.add_argument("--shutdown-delay", type=float,
                       default=ENV.shutdown_delay,
                       help="on SIGTERM, turn /readyz false at once but keep accepting for this many"
                            " seconds before draining (default 0)")
    serve.add_argument("--namespace", default=ENV.namespace or env_default_pod_namespace(),
                       help="namespace of the reservation Leases (default: POD_NAMESPACE, the service"
                            " account's namespace, else flannel-guard)")

    check = sub.add_parser(
        "check", help="check manifest files offline (exit 0 clean, 1 violations, 2 bad input)")
    check.add_argument("files", nargs="+", metavar="FILE", help="YAML or JSON files; - for stdin")
    _rule_args(check, offline=True)
    check.add_argument("--output", "-o", choices=["text", "json", "junit", "sarif"], default="text",
                       help="text (default): a line per object and its findings; json: the same as one"
                            " document, with files and lines; junit, sarif (2.1.0): for CI systems")
    check.add_argument("--strict", action="store_true",
                       help="also fail (exit 1) when nothing was checked or the cluster-cidr is unknown:"
                            " for CI, where a clean result must mean something")

    certs = sub.add_parser("certs", help="write a CA and a serving certificate for the webhook")
    certs.add_argument("--service", default=SERVICE,
                       help=f"the webhook's Service, for the DNS names (default {SERVICE})")
    certs.add_argument("--namespace", default=NAMESPACE,
                       help=f"the Service's namespace (default {NAMESPACE})")
    certs.add_argument("--out", type=Path, default=Path("certs"), metavar="DIR",
                       help="directory to write ca.crt, tls.crt and tls.key to (default certs)")
    certs.add_argument("--days", type=int, default=365,
                       help="validity of the serving certificate in days (default 365)")
    certs.add_argument("--dns", action="append", default=[], help="an extra DNS SAN (repeatable)")
    certs.add_argument("--ip", action="append", default=[], help="an extra IP SAN (repeatable)")
    certs.add_argument("--dev", action="store_true",
                       help="only if missing or expiring: add localhost, 127.0.0.1 and ::1 (make run)")
    add_doctor_parser(sub)
    return parser


def _cidr_arg(text: str | None) -> tuple | None:
    if not text:
        return None
    try:
        return parse_cidr_list(text)
    except CidrError as e:
        raise UsageError(f"--cluster-cidr {text[:80]!r}: {e}") from None


def _cmd_check(args: argparse.Namespace) -> int:
    from webhook.check import InputError, check_documents, load_documents
    from webhook.check_formats import render

    cidr = _cidr_arg(args.cluster_cidr)
    try:
        objects = load_documents(args.files)
    except InputError as e:
        print(f"flannel-guard check: {e}", file=sys.stderr)
        return EXIT_USAGE
    report = check_documents(
        objects, cluster_cidr=cidr, cidr_source="--cluster-cidr" if cidr else "nowhere",
        mask_v4=args.mask_v4 or 24, mask_v6=args.mask_v6 or 64,
        # Offline, an unknown cluster-cidr is a gap in the input, not a violation.
        settings=_rule_settings(args, Severity.WARNING), strict=args.strict,
    )
    print(render(report, args.output))
    return report.exit_code


def _cmd_certs(args: argparse.Namespace) -> int:
    from webhook.service import certs

    try:
        if args.dev:
            written = certs.ensure_dev_certs(args.out, service=args.service, namespace=args.namespace)
            print(f"{'wrote' if written else 'kept'} development certificates in {args.out}/")
            return EXIT_OK
        bundle = certs.generate(args.service, args.namespace, days=args.days,
                                extra_dns=args.dns, extra_ips=args.ip)
        paths = certs.write_bundle(bundle, args.out)
    except OSError as e:  # an --out that cannot be written: one line, exit 2
        raise UsageError(f"--out {args.out}: {e.strerror or e}") from None
    for path in paths:
        print(path)
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from webhook.service.server import serve

    configure_logging(args.log_level)
    standalone = args.standalone or not (args.in_cluster or args.kubeconfig)
    cidr_text = args.cluster_cidr or (DEFAULT_CLUSTER_CIDR if standalone else None)
    if not (args.tls_cert and args.tls_key):
        print("flannel-guard serve: --tls-cert and --tls-key are required (HTTPS only);"
              " `flannel-guard certs --dev --out certs` makes a development pair", file=sys.stderr)
        return EXIT_USAGE
    from webhook.service.tls import pair_problem

    problem = pair_problem(args.tls_cert, args.tls_key)
    if problem is not None:  # one line and exit 2, not a traceback (or OpenSSL's password prompt)
        print(f"flannel-guard serve: cannot serve --tls-cert {args.tls_cert} with --tls-key"
              f" {args.tls_key}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from webhook.service.preflight import serve_problem

    problem = serve_problem(args.host, (args.port, args.probe_port), None if standalone else
                            (args.kubeconfig, args.in_cluster))
    if problem is not None:
        print(f"flannel-guard serve: {problem}", file=sys.stderr)
        return EXIT_USAGE
    settings = Settings(
        host=args.host, port=args.port, probe_port=args.probe_port,
        tls_cert=args.tls_cert, tls_key=args.tls_key,
        client_ca=args.client_ca, mode=Mode(args.mode), standalone=standalone,
        kubeconfig=args.kubeconfig, in_cluster=args.in_cluster,
        cluster_cidr=_cidr_arg(cidr_text), mask_v4=args.mask_v4, mask_v6=args.mask_v6,
        rules=_rule_settings(args, Severity.ERROR), log_level=args.log_level,
        allocate=args.allocate == "on", on_reservation_failure=args.on_reservation_failure,
        on_claim_failure=args.on_claim_failure, leader_lease_duration=args.leader_lease_duration,
        reservation_grace=args.reservation_grace, fix_network=args.fix_network,
        namespace=args.namespace, cert_reload_interval=args.cert_reload_interval,
        shutdown_delay=args.shutdown_delay,
    )
    if args.cluster_cidr:
        source = "--cluster-cidr flag"
    elif standalone:
        source = f"the built-in default {DEFAULT_CLUSTER_CIDR}"
    else:
        source = "not discovered yet"
    asyncio.run(serve(settings, cidr_source=source))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a closed pipe is found here, not at interpreter exit
    except BrokenPipeError:  # `... | head`: the reader left; nothing more to say, no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_USAGE
    return code


def _main(argv: Sequence[str] | None) -> int:
    global ENV
    try:
        ENV = load_environment()
    except EnvironmentError_ as e:
        print(f"flannel-guard: {e}", file=sys.stderr)
        return EXIT_USAGE
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _cmd_check(args)
        if args.command == "certs":
            return _cmd_certs(args)
        if args.command == "doctor":
            from webhook.doctor.cli import run as run_doctor

            return run_doctor(args)
        return _cmd_serve(args)
    except UsageError as e:
        print(f"flannel-guard {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE

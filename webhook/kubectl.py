"""``kubectl flannel-guard ...``: the command line as a kubectl plugin.

kubectl runs ``kubectl-flannel_guard`` from $PATH for ``kubectl flannel-guard`` (its plugin
name rule: the words of the command joined by dashes, a dash inside a word written ``_``)
and hands it every argument after the plugin's name, its own flags included: kubectl parses
none of them for a plugin. So this entry point reads kubectl's flags itself, as kubectl
users type them, and runs ``flannel-guard`` with them:

- ``--context``, ``--kubeconfig`` and ``--cluster``/``--user`` choose the cluster as they do for
  kubectl, by asking kubectl (``kubectl config view --minify --flatten --raw``), so that what
  kubectl would talk to is what ``doctor`` reads; without them, doctor reads the current
  context of $KUBECONFIG or ~/.kube/config, as kubectl does;
- ``-n``/``--namespace`` is the namespace flannel-guard is installed in (``--guard-namespace``).

Every other subcommand (``check``, ``certs``, ...) is passed through unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence

__all__ = ["main", "split_kubectl_flags"]

# kubectl's global flags this plugin honours, and the long name each is stored under.
_FLAGS = {"--context": "context", "--kubeconfig": "kubeconfig", "--cluster": "cluster",
          "--user": "user", "-n": "namespace", "--namespace": "namespace"}
_SELECTING = ("context", "kubeconfig", "cluster", "user")


class UsageError(Exception):
    pass


def split_kubectl_flags(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """kubectl's flags (``--context X``, ``--context=X``, ``-n X``, ``-nX``) apart from the rest.

    Everything after ``--`` is left as it is.
    """
    flags: dict[str, str] = {}
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        name, eq, value = arg.partition("=")
        if name in _FLAGS and (eq or name == "-n" or name.startswith("--")):
            if not eq:
                if i + 1 >= len(args):
                    raise UsageError(f"{name} needs a value")
                i += 1
                value = args[i]
            if not value:
                raise UsageError(f"{name} needs a value")
            flags[_FLAGS[name]] = value
        elif arg.startswith("-n") and len(arg) > 2 and not arg.startswith("--"):
            flags["namespace"] = arg[2:]
        else:
            rest.append(arg)
        i += 1
    return flags, rest


def _kubeconfig_from_kubectl(flags: dict[str, str]) -> str:
    """The one context kubectl would use with these flags, credentials inlined, as a file's text."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise UsageError("--context/--kubeconfig/--cluster/--user are resolved by kubectl: none on $PATH")
    command = [kubectl, "config", "view", "--minify", "--flatten", "--raw"]
    command += [f"--{name}={flags[name]}" for name in _SELECTING if name in flags]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        raise UsageError(result.stderr.strip() or f"kubectl config view exited {result.returncode}")
    return result.stdout


def main(argv: Sequence[str] | None = None) -> int:
    from webhook.cli import main as flannel_guard

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "doctor":
        return flannel_guard(args)
    try:
        flags, rest = split_kubectl_flags(args[1:])
        config = _kubeconfig_from_kubectl(flags) if any(n in flags for n in _SELECTING) else None
    except UsageError as e:
        print(f"kubectl flannel-guard doctor: {e}", file=sys.stderr)
        return 2
    command = ["doctor", *rest]
    if "namespace" in flags:
        command += ["--guard-namespace", flags["namespace"]]
    if config is None:
        return flannel_guard(command)
    # Private to this user, removed when doctor is done: it may hold credentials.
    with tempfile.TemporaryDirectory(prefix="kubectl-flannel-guard-") as tmp:
        path = os.path.join(tmp, "kubeconfig")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(config)
        return flannel_guard([*command, "--kubeconfig", path])

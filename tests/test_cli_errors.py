"""Every command ends in one line and exit 2 on unusable input or environment, never a traceback.

Also: every flag of every command says what it does in ``--help``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from webhook.cli import _parser, main


def _env_outside_a_pod() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KUBERNETES_", "FLANNEL_GUARD_")) and k != "KUBECONFIG"}
    return env


@pytest.fixture(scope="module")
def dev_certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    assert main(["certs", "--dev", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(("source", "said"), [
    (["--in-cluster"], "--in-cluster: not in a pod"),
    (["--kubeconfig", "/nonexistent/kubeconfig"], "--kubeconfig /nonexistent/kubeconfig"),
])
def test_serve_without_a_usable_api_says_so_in_one_line(dev_certs, source, said):
    r = subprocess.run(
        [sys.executable, "-m", "webhook", "serve", *source, "--port", "0",
         "--tls-cert", str(dev_certs / "tls.crt"), "--tls-key", str(dev_certs / "tls.key")],
        capture_output=True, text=True, env=_env_outside_a_pod(), check=False, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("flannel-guard serve: cannot reach the Kubernetes API: ") and said in r.stderr


def test_serve_on_a_port_in_use_says_so_in_one_line(dev_certs):
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "webhook", "serve", "--standalone", "--host", "127.0.0.1",
             "--port", str(port), "--tls-cert", str(dev_certs / "tls.crt"),
             "--tls-key", str(dev_certs / "tls.key")],
            capture_output=True, text=True, env=_env_outside_a_pod(), check=False, timeout=60)
    assert r.returncode == 2
    assert r.stderr == f"flannel-guard serve: 127.0.0.1:{port} is already in use (another flannel-guard," \
                       " or --port/--probe-port)\n"


def test_check_into_a_pipe_closed_early_ends_without_a_traceback(tmp_path):
    items = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"n{i}"},
              "spec": {"podCIDR": "10.99.0.0/24"}} for i in range(3000)]
    listing = tmp_path / "nodes.json"
    listing.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    # `... -o json | head -1`: megabytes of JSON, the reader leaves after the first line.
    p = subprocess.Popen([sys.executable, "-m", "webhook", "check", str(listing),
                          "--cluster-cidr", "10.244.0.0/16", "-o", "json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env_outside_a_pod())
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.readline() == b"{\n"
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 2
    assert "Traceback" not in err and "BrokenPipeError" not in err and err == ""


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", ["serve", "check", "doctor", "certs"])
def test_every_flag_has_help(command):
    p = _subcommands()[command]
    missing = [a.option_strings for a in p._actions
               if a.option_strings and not isinstance(a, argparse._HelpAction) and not a.help]
    assert missing == []


def test_help_promises_only_what_each_command_does():
    commands = _subcommands()
    check = commands["check"].format_help()
    assert "kube-controller-manager's flag when it can be read" not in " ".join(check.split())
    assert "::1" in commands["certs"].format_help()


def test_certs_into_a_directory_that_cannot_be_made_says_so_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for flags in ([], ["--dev"]):
        assert main(["certs", *flags, "--out", str(blocker / "certs")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"flannel-guard certs: --out {blocker / 'certs'}: ") and err.count("\n") == 1

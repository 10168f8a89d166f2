"""Every FLANNEL_GUARD_* variable is typed and validated (webhook/control/settings.py, pydantic-settings).

A bad value is one line naming the variable and exit 2, before anything runs: never a
traceback, never a value silently taken as something else.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from webhook.control.settings import EnvironmentError_, load_environment

BAD = {
    "FLANNEL_GUARD_CLUSTER_CIDR": ["not-a-cidr", "10.244.0.1/16", "10.0.0.0/8,10.1.0.0/16"],
    "FLANNEL_GUARD_NODE_CIDR_MASK_SIZE": ["abc", "0", "33"],
    "FLANNEL_GUARD_NODE_CIDR_MASK_SIZE_IPV6": ["x", "129"],
    "FLANNEL_GUARD_NETWORK_MATCH": ["sometimes"],
    "FLANNEL_GUARD_MODE": ["bogus"],
    "FLANNEL_GUARD_PORT": ["abc", "0", "70000", "1.5"],
    "FLANNEL_GUARD_PROBE_PORT": ["-1", "http"],
    "FLANNEL_GUARD_LOG_LEVEL": ["loud"],
    "FLANNEL_GUARD_ALLOCATE": ["yes please"],
    "FLANNEL_GUARD_ON_RESERVATION_FAILURE": ["retry"],
    "FLANNEL_GUARD_ON_CLAIM_FAILURE": ["ignore"],
    "FLANNEL_GUARD_LEADER_LEASE_DURATION": ["2", "soon"],
    "FLANNEL_GUARD_RESERVATION_GRACE": ["0", "-5", "forever"],
    "FLANNEL_GUARD_FIX_NETWORK": ["maybe", "2"],
    "FLANNEL_GUARD_CERT_RELOAD_INTERVAL": ["0", "often"],
    "FLANNEL_GUARD_SHUTDOWN_DELAY": ["-1", "1000"],
}
GOOD = {
    "FLANNEL_GUARD_FIX_NETWORK": [("yes", True), ("on", True), ("true", True), ("0", False), ("off", False)],
    "FLANNEL_GUARD_MODE": [("WARN", "warn")],
    "FLANNEL_GUARD_PORT": [("9443", 9443)],
    "FLANNEL_GUARD_CLUSTER_CIDR": [("10.244.0.0/16,fd00::/56", "10.244.0.0/16,fd00::/56")],
}


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, vs in BAD.items() for v in vs])
def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(EnvironmentError_) as e:
        load_environment()
    assert str(e.value).startswith(f"{name}=")


@pytest.mark.parametrize(("name", "value", "expected"),
                         [(n, v, x) for n, vs in GOOD.items() for v, x in vs])
def test_good_values_are_read_as_their_type(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                            expected: object) -> None:
    monkeypatch.setenv(name, value)
    env = load_environment()
    assert getattr(env, name.removeprefix("FLANNEL_GUARD_").lower()) == expected


def test_every_flag_with_a_variable_is_in_the_model() -> None:
    """The table of BAD covers every typed variable (a new flag gets its bad values here too)."""
    from webhook.control.settings import _environment_model

    fields = set(_environment_model().model_fields)
    untyped = {"arch", "host", "tls_cert", "tls_key", "client_ca", "namespace"}  # free-form text/paths
    assert {n.removeprefix("FLANNEL_GUARD_").lower() for n in BAD} == fields - untyped


def test_without_any_variable_the_defaults_are_the_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FLANNEL_GUARD_* set: load_environment skips pydantic (check's start-up) and gives what
    the typed model would."""
    import os

    from webhook.control.settings import ENV_DEFAULTS, _environment_model

    for name in [n for n in os.environ if n.upper().startswith("FLANNEL_GUARD_")]:
        monkeypatch.delenv(name)
    fast = load_environment()
    assert vars(fast) == ENV_DEFAULTS == _environment_model()().model_dump()


def test_an_empty_variable_still_goes_through_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLANNEL_GUARD_PORT", "")
    assert load_environment().port == 8443  # empty is ignored, as pydantic-settings' env_ignore_empty


@pytest.mark.parametrize("command", [["certs", "--out", "/nonexistent/x"], ["check", "-"], ["serve"]])
def test_the_command_line_exits_2_with_one_line_before_doing_anything(command: list[str]) -> None:
    r = subprocess.run([sys.executable, "-m", "webhook", *command], capture_output=True, text=True,
                       env={"FLANNEL_GUARD_PORT": "abc", "PATH": "/usr/bin:/bin"}, check=False, input="")
    assert r.returncode == 2
    assert r.stderr.strip() == ("flannel-guard: FLANNEL_GUARD_PORT='abc': Input should be a valid"
                                " integer, unable to parse string as an integer")

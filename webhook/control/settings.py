"""One typed settings object, compiled once from flags and environment."""

from __future__ import annotations

import functools
import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webhook.core.cidr import IPNetwork, parse_cidr_list
from webhook.core.rules import Mode, RuleSettings

__all__ = ["CLAIM_CLOCK_SKEW", "DEFAULT_CLUSTER_CIDR", "ENV_PREFIX", "MAX_BODY_BYTES", "PENDING_CLAIMS_MAX",
           "PENDING_CLAIMS_SHARE", "EnvironmentError_", "Settings", "load_environment"]

# flannel's own default (kube-flannel.yml "Network") and kubeadm's usual --pod-network-cidr.
DEFAULT_CLUSTER_CIDR = "10.244.0.0/16"
ENV_PREFIX = "FLANNEL_GUARD_"
# The API server refuses objects over 3 MiB (etcd's request limit is 1.5 MiB, and the
# API server's --max-request-bytes default 3 MiB); an AdmissionReview carries object and
# oldObject, so twice that plus the envelope is the most a real review can be.
MAX_BODY_BYTES = 7 * 1024 * 1024
# Claims for Nodes not stored yet (pending: a joining node between /mutate and the API server
# storing it, or a forged review) are capped per cluster and IP family at the smaller of these
# two figures: 64 claims, or a quarter of the pool (that family's node blocks).
# A real join holds a pending claim for the time the API server takes to store the Node (well
# under a second; at most the webhook timeout), so even 1,000 nodes joining in a minute hold a
# handful at once; a forged load holds at most the cap, and the other three quarters of a
# /16's 256 blocks (192) stay for real nodes. Beyond the cap /mutate admits without a podCIDR
# (the assigning loop gives one once the Node is stored) and /validate judges without claiming.
PENDING_CLAIMS_MAX = 64
PENDING_CLAIMS_SHARE = 0.25
# Seconds a claim's acquire or renew time may be ahead of this replica's clock and still be
# believed (replicas' clocks differ by NTP's milliseconds; a Lease dated 2099 is not a claim).
CLAIM_CLOCK_SKEW = 60.0


@dataclass(frozen=True)
class Settings:
    """Everything ``serve`` needs, validated."""

    host: str = "127.0.0.1"
    port: int = 8443
    # Plain-HTTP /healthz, /readyz and /metrics on this port of ``host`` (0: none; the
    # HTTPS port serves them too, but there a --client-ca refuses the kubelet's probes).
    probe_port: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    mode: Mode = Mode.ENFORCE
    standalone: bool = True
    kubeconfig: Path | None = None
    in_cluster: bool = False
    cluster_cidr: tuple[IPNetwork, ...] | None = None
    # None: kube-controller-manager's flags when they can be read, else 24 / 64.
    mask_v4: int | None = None
    mask_v6: int | None = None
    rules: RuleSettings = field(default_factory=RuleSettings)
    max_body_bytes: int = MAX_BODY_BYTES
    log_level: str = "info"
    # Mutating mode: give Nodes without a podCIDR a free one.
    allocate: bool = True
    # When the reservation cannot be written: "admit" the Node without a podCIDR (with a
    # warning) rather than block node registration, or "deny" it.
    on_reservation_failure: str = "admit"
    # When the claim of a podCIDR being written (validating webhook) cannot be stored: "deny"
    # the write (its writer retries; a duplicate is never admitted) or "admit" it with a warning.
    on_claim_failure: str = "deny"
    # Seconds a reservation lives before it is reclaimed (its node then holds the CIDR itself).
    reservation_grace: float = 600.0
    # The cap on pending claims and the clock skew tolerated (the figures above, issue 28).
    pending_claims_max: int = PENDING_CLAIMS_MAX
    pending_claims_share: float = PENDING_CLAIMS_SHARE
    claim_clock_skew: float = CLAIM_CLOCK_SKEW
    # The assigning loop's leader election: seconds a leader's Lease lasts without renewal.
    leader_lease_duration: int = 15
    # Correct a flannel ConfigMap's Network to the cluster-cidr instead of refusing it.
    fix_network: bool = False
    namespace: str = "flannel-guard"
    # Seconds between polls of --tls-cert/--tls-key for a rotated pair.
    cert_reload_interval: float = 10.0
    # Seconds between SIGTERM (readiness false at once) and no longer accepting connections.
    shutdown_delay: float = 0.0

    @staticmethod
    def parse_cluster_cidr(text: str | None) -> tuple[IPNetwork, ...] | None:
        return parse_cidr_list(text) if text else None


# --- the environment, typed and validated ----------------------------------------------------


class EnvironmentError_(ValueError):
    """A ``FLANNEL_GUARD_*`` variable holds a value its flag would refuse (exit 2, one line)."""


# Each variable's value when it is not set (the typed model below takes its defaults from here).
ENV_DEFAULTS: dict[str, Any] = {
    "cluster_cidr": None,
    "node_cidr_mask_size": None,
    "node_cidr_mask_size_ipv6": None,
    "network_match": "exact",
    "arch": None,
    "mode": "enforce",
    "host": "127.0.0.1",
    "port": 8443,
    "probe_port": 0,
    "tls_cert": None,
    "tls_key": None,
    "client_ca": None,
    "log_level": "info",
    "allocate": "on",
    "on_reservation_failure": "admit",
    "on_claim_failure": "deny",
    "leader_lease_duration": 15,
    "reservation_grace": 600.0,
    "fix_network": False,
    "cert_reload_interval": 10.0,
    "shutdown_delay": 0.0,
    "namespace": None,
}


@functools.cache
def _environment_model() -> type:
    """The typed model of every ``FLANNEL_GUARD_*`` variable (pydantic-settings, built on first use
    so that ``import webhook.control.settings`` stays cheap)."""
    from typing import Annotated, Literal

    from pydantic import Field, field_validator
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class Environment(BaseSettings):
        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, case_sensitive=False, extra="ignore",
                                          env_ignore_empty=True)

        cluster_cidr: str | None = ENV_DEFAULTS["cluster_cidr"]
        node_cidr_mask_size: Annotated[int, Field(ge=1, le=32)] | None = ENV_DEFAULTS["node_cidr_mask_size"]
        node_cidr_mask_size_ipv6: Annotated[int, Field(ge=1, le=128)] | None = \
            ENV_DEFAULTS["node_cidr_mask_size_ipv6"]
        network_match: Literal["exact", "contains"] = ENV_DEFAULTS["network_match"]
        arch: str | None = ENV_DEFAULTS["arch"]
        mode: Literal["enforce", "warn"] = ENV_DEFAULTS["mode"]
        host: str = ENV_DEFAULTS["host"]
        port: Annotated[int, Field(ge=1, le=65535)] = ENV_DEFAULTS["port"]
        probe_port: Annotated[int, Field(ge=0, le=65535)] = ENV_DEFAULTS["probe_port"]
        tls_cert: Path | None = ENV_DEFAULTS["tls_cert"]
        tls_key: Path | None = ENV_DEFAULTS["tls_key"]
        client_ca: Path | None = ENV_DEFAULTS["client_ca"]
        log_level: Literal["debug", "info", "warning", "error"] = ENV_DEFAULTS["log_level"]
        allocate: Literal["on", "off"] = ENV_DEFAULTS["allocate"]
        on_reservation_failure: Literal["admit", "deny"] = ENV_DEFAULTS["on_reservation_failure"]
        on_claim_failure: Literal["deny", "admit"] = ENV_DEFAULTS["on_claim_failure"]
        leader_lease_duration: Annotated[int, Field(ge=3, le=3600)] = ENV_DEFAULTS["leader_lease_duration"]
        reservation_grace: Annotated[float, Field(gt=0, le=86400)] = ENV_DEFAULTS["reservation_grace"]
        fix_network: bool = ENV_DEFAULTS["fix_network"]
        cert_reload_interval: Annotated[float, Field(gt=0, le=3600)] = ENV_DEFAULTS["cert_reload_interval"]
        shutdown_delay: Annotated[float, Field(ge=0, le=300)] = ENV_DEFAULTS["shutdown_delay"]
        namespace: str | None = ENV_DEFAULTS["namespace"]

        @field_validator("cluster_cidr")
        @classmethod
        def _cidr(cls, value: str | None) -> str | None:
            if value:
                parse_cidr_list(value)  # CidrError is a ValueError: reported with the variable
            return value or None

        @field_validator("log_level", "mode", "network_match", "allocate", "on_reservation_failure",
                         "on_claim_failure", mode="before")
        @classmethod
        def _lower(cls, value: object) -> object:
            return value.lower() if isinstance(value, str) else value

    return Environment


def load_environment() -> Any:
    """Every ``FLANNEL_GUARD_*`` variable, typed; :class:`EnvironmentError_` names the first bad one."""
    values = {k[len(ENV_PREFIX):].lower(): v for k, v in os.environ.items()
              if k.upper().startswith(ENV_PREFIX)}
    if not values:
        # Nothing to validate: the defaults, without importing pydantic (most of `check`'s start-up).
        return types.SimpleNamespace(**ENV_DEFAULTS)
    from pydantic import ValidationError

    model = _environment_model()
    try:
        return model()
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err.get("loc") else "?"
        raw = values.get(field, "")
        reason = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        raise EnvironmentError_(f"{ENV_PREFIX}{field.upper()}={str(raw)[:60]!r}: {reason}") from None

"""One typed settings object, compiled once from flags and environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from webhook.cidr import IPNetwork, parse_cidr_list
from webhook.rules import Mode, RuleSettings

__all__ = ["DEFAULT_CLUSTER_CIDR", "ENV_PREFIX", "MAX_BODY_BYTES", "Settings", "env_default"]

# flannel's own default (kube-flannel.yml "Network") and kubeadm's usual --pod-network-cidr.
DEFAULT_CLUSTER_CIDR = "10.244.0.0/16"
ENV_PREFIX = "FLANNEL_GUARD_"
# The API server refuses objects over 3 MiB (etcd's request limit is 1.5 MiB, and the
# API server's --max-request-bytes default 3 MiB); an AdmissionReview carries object and
# oldObject, so twice that plus the envelope is the most a real review can be.
MAX_BODY_BYTES = 7 * 1024 * 1024


def env_default(name: str, default: str | None = None) -> str | None:
    """``FLANNEL_GUARD_<NAME>`` from the environment, else ``default``."""
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


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

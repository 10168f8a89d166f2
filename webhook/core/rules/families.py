"""net-conf.json's IP families as flannel's kube subnet manager uses them, across versions. Pure.

What flannel parses without complaint but fails on, or ignores, once it runs with
``--kube-subnet-mgr`` (``pkg/subnet/kube/kube.go`` ``AcquireLease``, ``pkg/ipmatch/match.go``,
each backend's ``RegisterNetwork``):

* since v0.28.0 (commit 80e1e42f) an empty ``Network`` (absent, or ``0.0.0.0/0``, which
  ``ip.IP4Net.Empty`` also calls empty) fails every node that has an IPv4 podCIDR; before,
  the empty network read as ``0.0.0.0/0`` and contained every podCIDR, so flannel ran;
* the same commit checks ``IPv6Network`` only with ``EnableIPv6`` (before, a node's IPv6
  podCIDR was checked against an unset IPv6Network and failed);
* k3s writes ``"Network": "0.0.0.0/0"`` / ``"IPv6Network": "::/0"`` as placeholders for a
  family it turned off (``EnableIPv4``/``EnableIPv6`` false): flannel ignores them, so do we;
* IPv6-only (``EnableIPv4`` false), the backends that take the node's IPv4 external address
  (:data:`~webhook.core.rules.backends.IPV4_ADDRESS_BACKENDS`) panic in ``ip.FromIP``.
"""

from __future__ import annotations

from webhook.core.cidr import ParsedCidr
from webhook.core.rules.backends import DUAL_STACK_BACKENDS, IPV4_ADDRESS_BACKENDS
from webhook.core.rules.findings import Finding, Severity

__all__ = ["family_findings", "is_placeholder"]


def is_placeholder(net: ParsedCidr | None) -> bool:
    """``0.0.0.0/0`` or ``::/0``: empty to flannel (``IP4Net.Empty``/``IP6Net.Empty``), k3s's placeholder."""
    return net is not None and net.network.prefixlen == 0 and int(net.network.network_address) == 0


def family_findings(enable_ipv4: bool, enable_ipv6: bool, network: ParsedCidr | None,
                    ipv6_network: ParsedCidr | None, backend_type: str) -> list[Finding]:
    """Each family's network against its Enable flag, and the backend against the families."""
    out: list[Finding] = []
    for enabled, net, key in ((enable_ipv4, network, "Network"), (enable_ipv6, ipv6_network, "IPv6Network")):
        flag = "EnableIPv4 (true by default)" if key == "Network" else "EnableIPv6"
        if enabled and net is None:
            out.append(Finding(
                Severity.ERROR, "MissingNetwork", f"net-conf.json has no {key} but {flag} is on.",
                "every node then fails with 'subnet ... specified in the flannel net config doesn't"
                " contain ... PodCIDR' (pkg/subnet/kube/kube.go; since v0.28.0, commit 80e1e42f:"
                " before, the empty network contained every podCIDR and flannel ran).",
                f'add "{key}": "<the cluster-cidr>".',
            ))
        elif enabled and is_placeholder(net):
            out.append(Finding(
                Severity.ERROR, "EmptyNetwork",
                f"net-conf.json {key} {net.text} is empty to flannel (it is k3s's placeholder for a"  # type: ignore[union-attr]
                f" family turned off) but {flag} is on.",
                "flannel v0.28.0+ (pkg/subnet/kube/kube.go, commit 80e1e42f) fails every node with"
                " 'subnet ... doesn't contain ... PodCIDR'; older versions ran with routes for every"
                " address.",
                f'write "{key}": "<the cluster-cidr>", or turn the family off.',
            ))
        if net is not None and net.host_bits_set:
            out.append(Finding(
                Severity.ERROR, "HostBitsSet",
                f"net-conf.json {key} {net.text} has host bits set; flannel silently reads it"
                f" as {net.network}.",
                "A network written one way and used another clashes with other networks unseen.",
                f'write "{key}": "{net.network}".',
            ))
        if net is not None and not enabled and not is_placeholder(net):
            out.append(Finding(
                Severity.WARNING, "IgnoredNetwork",
                f"net-conf.json sets {key} but {'EnableIPv4' if key == 'Network' else 'EnableIPv6'}"
                " is off: flannel ignores it.",
            ))
    if enable_ipv6 and not enable_ipv4 and backend_type in IPV4_ADDRESS_BACKENDS:
        out.append(Finding(
            Severity.ERROR, "IPv6OnlyBackend",
            f"the {backend_type} backend cannot run IPv6-only (EnableIPv4 false): it needs the"
            " node's IPv4 address.",
            "Its RegisterNetwork calls ip.FromIP on the external IPv4 address, which"
            " pkg/ipmatch/match.go leaves empty without IPv4: flannel panics ('Address is not an"
            " IPv4 address') on every node.",
            f"use one of {', '.join(sorted(DUAL_STACK_BACKENDS))} (vxlan: kube-flannel.yml's).",
        ))
    elif enable_ipv6 and backend_type not in DUAL_STACK_BACKENDS:
        out.append(Finding(
            Severity.WARNING, "NoIPv6Backend",
            f"the {backend_type} backend carries no IPv6: flannel silently turns IPv6 off.",
            fix=f"use one of {', '.join(sorted(DUAL_STACK_BACKENDS))}.",
        ))
    return out

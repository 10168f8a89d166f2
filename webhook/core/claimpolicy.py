"""When a claim is believed, when it is an orphan, and how many claims may wait for their Node.

Pure decisions over plain data (issue 28). A claim (:class:`~webhook.core.claims.Claim`)
comes from a Lease that anything allowed to write Leases in flannel-guard's namespace
could have written, and from a Node review that anything reaching the webhook's port
could have sent. So:

* **trust** (:func:`distrust`): a claim counts as occupying its CIDR only if its Lease
  is named after that very CIDR (:func:`lease_name`), the CIDR has the node mask of its
  family and lies inside that family's cluster-cidr, and neither of its times is in the
  future (beyond :attr:`ClaimPolicy.skew`, the clock difference tolerated between
  replicas). Anything else is ignored and reported, with a reason from :data:`REASONS`
  (a closed set: it is a metric label);
* **pending** (:func:`pending`): a claim whose holder does not hold that CIDR in the
  node index: its Node is not stored yet (a joining node, or a forged review), or it is
  stored with another podCIDR (a forged review under a real name);
* **the cap** (:func:`pending_cap`): at most ``min(pending_max, share of the pool)``
  pending claims per cluster and IP family, the pool being that family's node blocks (a
  dual-stack node's two claims count once in each family, so the cap is in nodes too).
  A node stored without a podCIDR is exempt for its first claim (:func:`exempt`):
  kube-controller-manager's patch and the assigning loop must not be starved by forged
  load;
* **orphans** (:func:`orphan`): a pending claim older than ``orphan_after`` seconds *by
  acquisition*, not by its last renewal, whose holder the node index (confirmed by the
  API after that age was reached) does not show holding it. Renewing a claim for an
  unseen name past that age is refused (:func:`renewable`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from webhook.core.cidr import IPNetwork, within

__all__ = [
    "LEASE_PREFIX",
    "REASONS",
    "ClaimPolicy",
    "distrust",
    "exempt",
    "lease_name",
    "orphan",
    "pending",
    "pending_cap",
    "pool_size",
    "renewable",
]

LEASE_PREFIX = "podcidr-"

#: Why a claim is not trusted (metric label values, doctor wording keys).
REASONS = ("name", "mask", "outside", "future")

_WHY = {
    "name": "its Lease is not named after its CIDR",
    "mask": "its CIDR is not of the node mask size",
    "outside": "its CIDR is outside the cluster-cidr",
    "future": "its time is in the future",
}


def lease_name(cidr: IPNetwork) -> str:
    """A DNS-1123 name that is a function of the CIDR alone, e.g. ``podcidr-v4-10-244-1-0-24``."""
    if cidr.version == 4:
        return f"{LEASE_PREFIX}v4-{str(cidr.network_address).replace('.', '-')}-{cidr.prefixlen}"
    return f"{LEASE_PREFIX}v6-{cidr.network_address.exploded.replace(':', '')}-{cidr.prefixlen}"


@dataclass(frozen=True, slots=True)
class ClaimPolicy:
    """What a claim is judged against: the cluster-cidr (None: unknown), the node masks, the figures.

    ``pending_max`` and ``pending_share`` are the cap's two figures (declared once, in
    :mod:`webhook.control.settings`); ``skew`` the seconds a claim's time may be ahead of ours.
    """

    cluster_cidr: tuple[IPNetwork, ...] | None
    mask_v4: int = 24
    mask_v6: int = 64
    orphan_after: float = 120.0
    pending_max: int = 64
    pending_share: float = 0.25
    skew: float = 60.0

    def mask_for(self, version: int) -> int:
        return self.mask_v4 if version == 4 else self.mask_v6

    @staticmethod
    def explain(reason: str) -> str:
        """A reason of :func:`distrust` in words."""
        return _WHY.get(reason, reason)


def distrust(cidr: IPNetwork, lease: str, times: Iterable[float], policy: ClaimPolicy,
             now: float) -> str | None:
    """Why a claim of ``cidr`` recorded in the Lease named ``lease`` is not believed (None: it is).

    ``lease`` empty: a claim in memory, named by construction. ``times``: its acquisition
    and renewal times (0: absent). With the cluster-cidr unknown the range is not judged
    (nothing is allocated then either); the name, the mask and the time always are.
    """
    if lease and lease != lease_name(cidr):
        return "name"
    if cidr.prefixlen != policy.mask_for(cidr.version):
        return "mask"
    if policy.cluster_cidr is not None and not any(within(cidr, net) for net in policy.cluster_cidr):
        return "outside"
    if any(t > now + policy.skew for t in times):
        return "future"
    return None


def pool_size(policy: ClaimPolicy, version: int | None = None) -> int:
    """Node blocks of the cluster-cidr of ``version`` (None: the smallest family); 0 when unknown."""
    sizes = [1 << (policy.mask_for(n.version) - n.prefixlen) for n in policy.cluster_cidr or ()
             if policy.mask_for(n.version) >= n.prefixlen and version in (None, n.version)]
    return min(sizes) if sizes else 0


def pending_cap(policy: ClaimPolicy, version: int | None = None) -> int:
    """How many pending claims of a family (None: the smallest) the cluster may hold:
    ``min(pending_max, share of that family's pool)``, at least 1.

    With the cluster-cidr unknown (nothing is allocated then), ``pending_max``.
    """
    if policy.cluster_cidr is None:
        return max(1, policy.pending_max)
    return max(1, min(policy.pending_max, int(pool_size(policy, version) * policy.pending_share)))


def pending(cidr: IPNetwork, holder: str, held_by: Callable[[str], Sequence[IPNetwork]]) -> bool:
    """Whether a claim of ``cidr`` by ``holder`` waits for its Node: the index does not show the
    holder with that CIDR (``held_by(name)``: the podCIDRs the index holds for ``name``)."""
    return not any(net.version == cidr.version and net.overlaps(cidr)  # type: ignore[arg-type]
                   for net in held_by(holder))


def exempt(node: str, stored_unassigned: bool, pending_of_node: int) -> bool:
    """Whether a new claim for ``node`` goes past the cap: a node stored without a podCIDR, for
    its first pending claim (kube-controller-manager's patch, the assigning loop)."""
    return bool(node) and stored_unassigned and pending_of_node == 0


def orphan(acquired: float, is_pending: bool, now: float, confirmed: float | None,
           orphan_after: float) -> bool:
    """Whether a claim acquired at ``acquired`` is released as an orphan now.

    Only a pending claim (:func:`pending`), only once ``orphan_after`` seconds old by
    acquisition, and only when the node index was confirmed by the API (``confirmed``,
    None: never, or no API) after that age was reached: watch events arrive in order, so
    a Node stored with that CIDR would have been seen.
    """
    if not is_pending or confirmed is None:
        return False
    due = acquired + orphan_after
    return now >= due and confirmed >= due


def renewable(acquired: float, stored: bool, now: float, orphan_after: float) -> bool:
    """Whether a claim may be renewed: always for a stored holder; for a name the cluster has not
    stored, only while younger than ``orphan_after`` by acquisition (a forged name re-sent every
    minute must not keep its CIDR for ever)."""
    return stored or now - acquired < orphan_after

"""The data of the admission policy's parameter ConfigMap, from the resolved cluster-cidr.

The ValidatingAdmissionPolicy ``flannel-guard-node-podcidrs``
(manifests/components/admission-policy/node-podcidrs.yaml) reads the ConfigMap
``flannel-guard-policy-params`` (:data:`~webhook.core.constants.POLICY_PARAMS_CONFIGMAP`)
as ``params``. Its keys:

* ``clusterCIDRs``: the cluster-cidr, comma-separated with no spaces, in
  kube-controller-manager's order (the policy pairs ``podCIDRs[i]`` with the i-th);
* ``nodeCIDRMaskSizeIPv4``, ``nodeCIDRMaskSizeIPv6``: the node mask size of each family,
  decimal (``--node-cidr-mask-size-ipv4`` / ``-ipv6``);
* ``source``: where the cluster-cidr came from (for people and ``doctor``, not the policy);
* ``observedAt``: when the elected replica wrote these values (RFC 3339, UTC); it writes only
  when a value other than this one changes.

Pure: the kube layer (webhook/kube/policyparams.py) reads and writes the ConfigMap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from webhook.core.cidr import IPNetwork

__all__ = ["KEYS", "POLICY_KEYS", "params_agree", "params_data", "same_params"]

#: The keys the policy's expressions read.
POLICY_KEYS = ("clusterCIDRs", "nodeCIDRMaskSizeIPv4", "nodeCIDRMaskSizeIPv6")
#: Every key written.
KEYS = (*POLICY_KEYS, "source", "observedAt")


def params_data(cluster_cidr: Sequence[IPNetwork], mask_v4: int, mask_v6: int, *, source: str,
                observed_at: str) -> dict[str, str]:
    """The ConfigMap's ``data``; ``cluster_cidr`` in its own order, never empty."""
    if not cluster_cidr:
        raise ValueError("no cluster-cidr: nothing for the policy to check against")
    return {
        "clusterCIDRs": ",".join(str(net) for net in cluster_cidr),
        "nodeCIDRMaskSizeIPv4": str(int(mask_v4)),
        "nodeCIDRMaskSizeIPv6": str(int(mask_v6)),
        "source": source[:200],
        "observedAt": observed_at,
    }


def same_params(stored: Mapping[str, object] | None, wanted: Mapping[str, str]) -> bool:
    """Whether ``stored`` (a ConfigMap's data) already says what ``wanted`` says, ``observedAt`` aside."""
    if not isinstance(stored, Mapping):
        return False
    return all(stored.get(key) == wanted.get(key) for key in KEYS if key != "observedAt")


def params_agree(stored: Mapping[str, object] | None, cluster_cidr: Sequence[IPNetwork],
                 mask_v4: int, mask_v6: int) -> bool:
    """Whether a stored ConfigMap's data gives the policy this cluster-cidr and these masks.

    Only the keys the policy reads (``source`` is a description): what ``doctor`` asks to say
    whether the parameters are current.
    """
    if not isinstance(stored, Mapping) or not cluster_cidr:
        return False
    wanted = params_data(cluster_cidr, mask_v4, mask_v6, source="", observed_at="")
    return all(stored.get(key) == wanted[key] for key in POLICY_KEYS)

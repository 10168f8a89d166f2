"""Names shared by the code and the install manifests under ``manifests/``.

``tests/test_manifests.py`` checks that the rendered manifests use exactly these
values (namespace, Service, container port, webhook paths, probe paths, TLS
Secret), so changing one here without changing the manifests fails the tests.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "LEASE_POLICY",
    "NAMESPACE",
    "NODE_POLICY",
    "POLICY_PARAMS_CONFIGMAP",
    "PORT_IN_CLUSTER",
    "ROUTE_HEALTHZ",
    "ROUTE_METRICS",
    "ROUTE_MUTATE",
    "ROUTE_READYZ",
    "ROUTE_VALIDATE",
    "SERVICE",
    "TLS_SECRET",
]

#: Namespace the webhook is installed in (excluded from its own webhooks).
NAMESPACE: Final = "flannel-guard"
#: Name of the Service (and Deployment, ServiceAccount) the API server calls.
SERVICE: Final = "flannel-guard"
#: Container port in the cluster. The pods run with hostNetwork, so this port
#: is taken on the control-plane node itself: 9643 avoids the apiserver (6443),
#: etcd (2379-2380), kubelet/kcm/scheduler (10250/10257/10259) and the
#: 8443/9443 that other hostNetwork webhooks commonly take.
PORT_IN_CLUSTER: Final = 9643
#: AdmissionReview endpoints.
ROUTE_VALIDATE: Final = "/validate"
ROUTE_MUTATE: Final = "/mutate"
#: Liveness, readiness and Prometheus endpoints (same HTTPS port).
ROUTE_HEALTHZ: Final = "/healthz"
ROUTE_READYZ: Final = "/readyz"
ROUTE_METRICS: Final = "/metrics"
#: kubernetes.io/tls Secret holding tls.crt, tls.key and ca.crt.
TLS_SECRET: Final = "flannel-guard-tls"

#: The opt-in ValidatingAdmissionPolicies (manifests/components/admission-policy), each with
#: a ValidatingAdmissionPolicyBinding of the same name: the stateless Node podCIDR rules,
#: and Lease writes in NAMESPACE by flannel-guard's ServiceAccount only.
NODE_POLICY: Final = "flannel-guard-node-podcidrs"
LEASE_POLICY: Final = "flannel-guard-leases"
#: The node policy's parameter ConfigMap (in NAMESPACE), written by the elected replica:
#: keys in webhook.core.policyparams.
POLICY_PARAMS_CONFIGMAP: Final = "flannel-guard-policy-params"

"""Names shared by the code and the install manifests under ``manifests/``.

``tests/test_manifests.py`` checks that the rendered manifests use exactly these
values (namespace, Service, container port, webhook paths, probe paths, TLS
Secret), so changing one here without changing the manifests fails the tests.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "FLANNEL_CONFIGMAPS",
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

#: The flannel ConfigMaps (namespace, name) flannel-guard guards, judged alike (key net-conf.json),
#: in the order that decides between them: when no other source holds a cluster-cidr, the first
#: that exists with a Network defines it (a second one with another Network is refused). A cluster
#: normally has one; the order only matters during a migration, where the newer layout wins.
#: Used by the server (--flannel-configmap default, the deciding order), doctor and check;
#: the webhook configurations and RBAC of manifests/ and charts/ name the same (tests/test_manifests.py).
FLANNEL_CONFIGMAPS: Final = (
    ("kube-flannel", "kube-flannel-cfg"),  # kube-flannel.yml since flannel v0.20
    ("kube-system", "kube-flannel-cfg"),  # older kube-flannel.yml; kubespray; RKE2 --cni=flannel
    ("kube-system", "rke2-canal-config"),  # RKE2's default CNI, Canal (rancher/rke2-charts rke2-canal)
    ("kube-system", "canal-config"),  # upstream Canal's canal.yaml
)

"""The plain data ``doctor`` diagnoses: what :func:`webhook.doctor.collect.gather` read from the API.

Nothing here does I/O or judges anything; tests build these by hand, or serve
objects shaped like the real ones on a loopback API and let ``gather`` fill them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from webhook.core.discovery import ControllerManagerFacts, Resolution

__all__ = [
    "FLANNEL_ANNOTATION_PREFIX",
    "ClaimFacts",
    "ClusterFacts",
    "ConditionFacts",
    "ConfigMapFacts",
    "EventFacts",
    "GuardFacts",
    "NodeFacts",
    "PodFacts",
    "WebhookFacts",
    "WorkloadPodFacts",
]

#: flannel's annotation prefix (flannel ``main.go`` ``--kube-annotation-prefix`` default;
#: the names are built in ``pkg/subnet/kube/annotations.go`` newAnnotations).
FLANNEL_ANNOTATION_PREFIX = "flannel.alpha.coreos.com/"


@dataclass(frozen=True)
class ConfigMapFacts:
    """A flannel ConfigMap that exists; ``net_conf`` is None when it has no net-conf.json key."""

    namespace: str
    name: str
    net_conf: str | None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ConditionFacts:
    """One entry of a Node's ``status.conditions``."""

    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class NodeFacts:
    """A Node: its podCIDRs as written (``spec.podCIDRs``, else ``[spec.podCIDR]``) and what flannel wrote.

    ``annotations`` keeps only flannel's (``flannel.alpha.coreos.com/...``);
    ``addresses`` is ``status.addresses`` as (type, address) pairs.
    """

    name: str
    pod_cidrs: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    addresses: tuple[tuple[str, str], ...] = ()
    conditions: tuple[ConditionFacts, ...] = ()
    os: str = ""

    def annotation(self, key: str) -> str:
        return self.annotations.get(FLANNEL_ANNOTATION_PREFIX + key, "")

    def condition(self, kind: str) -> ConditionFacts | None:
        return next((c for c in self.conditions if c.type == kind), None)


@dataclass(frozen=True)
class PodFacts:
    """A flannel pod: where it runs, whether it is Ready, and its log when read.

    ``last_log_line`` is the last error line (klog header trimmed); ``log_lines`` the
    lines of the tail that name a known failure (see :mod:`webhook.doctor.klog`).
    """

    namespace: str
    name: str
    node: str | None
    ready: bool
    state: str = ""
    restarts: int = 0
    last_log_line: str | None = None
    log_lines: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class EventFacts:
    """A core/v1 Event: what it is about, who reported it (kubelet: ``source.host``), and its message."""

    namespace: str
    kind: str
    name: str
    reason: str
    message: str
    node: str = ""
    count: int = 1


@dataclass(frozen=True)
class WorkloadPodFacts:
    """A running pod on the pod network (not hostNetwork): its node and IPs."""

    namespace: str
    name: str
    node: str
    ips: tuple[str, ...]


@dataclass(frozen=True)
class WebhookFacts:
    """One webhook of a (Validating|Mutating)WebhookConfiguration."""

    name: str
    service: tuple[str, str] | None  # (namespace, name) of clientConfig.service
    ca_bundle: bytes = b""
    failure_policy: str = "Fail"


@dataclass(frozen=True)
class ClaimFacts:
    """A Lease labelled as a flannel-guard podCIDR claim, as read (nothing believed yet).

    ``acquired``: spec.acquireTime (else creationTimestamp), ``renewed``: spec.renewTime,
    in seconds since the epoch (0: absent).
    """

    lease: str
    holder: str
    cidr: str
    acquired: float = 0.0
    renewed: float = 0.0


@dataclass(frozen=True)
class PolicyFacts:
    """One of flannel-guard's ValidatingAdmissionPolicies and its binding (of the same name), as read."""

    name: str
    policy: bool = False              # the policy exists
    binding: bool = False             # its binding exists
    failure_policy: str = "Fail"      # the policy's spec.failurePolicy
    actions: tuple[str, ...] = ()     # the binding's validationActions
    param_not_found: str = ""         # the binding's paramRef.parameterNotFoundAction

    @classmethod
    def read(cls, name: str, policy: object, binding: object) -> PolicyFacts:
        """From the two objects as the API returned them (None: not found, or not read)."""
        spec = (policy.get("spec") or {}) if isinstance(policy, dict) else {}
        bspec = (binding.get("spec") or {}) if isinstance(binding, dict) else {}
        return cls(name, isinstance(policy, dict), isinstance(binding, dict),
                   str(spec.get("failurePolicy") or "Fail"),
                   tuple(str(a) for a in bspec.get("validationActions") or ()),
                   str((bspec.get("paramRef") or {}).get("parameterNotFoundAction") or ""))


@dataclass(frozen=True)
class GuardFacts:
    """flannel-guard itself: its Deployment, webhook configurations, Service endpoints and certificate.

    ``None`` fields were not found (404); ``unreadable`` names what could not be read.
    """

    namespace: str
    deployment_found: bool = False
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    validating: tuple[WebhookFacts, ...] | None = None
    mutating: tuple[WebhookFacts, ...] | None = None
    service_found: bool = False
    ready_endpoints: int = 0
    not_ready_endpoints: int = 0
    serving_cert: bytes | None = None  # PEM from the TLS Secret's tls.crt
    unreadable: tuple[str, ...] = ()
    # The opt-in admission policies (components/admission-policy) and the parameter ConfigMap's data.
    policies: tuple[PolicyFacts, ...] = ()
    policy_params: Mapping[str, str] | None = None

    @property
    def installed(self) -> bool:
        return self.deployment_found or self.validating is not None or self.mutating is not None


@dataclass(frozen=True)
class ClusterFacts:
    """Everything ``diagnose`` reads; ``gather`` fills it from the API, tests build it by hand."""

    resolution: Resolution
    configmaps: tuple[ConfigMapFacts, ...] = ()
    nodes: tuple[NodeFacts, ...] = ()
    pods: tuple[PodFacts, ...] = ()
    nodes_readable: bool = True
    # What could not be read (403, 404, timeouts), for the report's notes.
    notes: tuple[str, ...] = ()
    events: tuple[EventFacts, ...] = ()
    workload_pods: tuple[WorkloadPodFacts, ...] = ()
    controller_managers: tuple[ControllerManagerFacts, ...] = ()
    kube_proxy_mode: str | None = None
    service_cidrs: tuple[str, ...] = ()  # networking.k8s.io/v1 ServiceCIDR spec.cidrs
    reservations: tuple[tuple[str, str], ...] = ()  # flannel-guard Leases: (node, CIDR)
    claims: tuple[ClaimFacts, ...] = ()  # the same Leases, whole enough to judge (issue 28)
    guard: GuardFacts | None = None
    # The flannel ConfigMaps looked for (--flannel-configmap), in order.
    flannel_configmaps: tuple[tuple[str, str], ...] = (("kube-flannel", "kube-flannel-cfg"),
                                                       ("kube-system", "kube-flannel-cfg"))
    gathered_at: float | None = None  # seconds since the epoch: "now" for certificate expiry

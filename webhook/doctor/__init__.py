"""``flannel-guard doctor``: a read-only diagnosis of a live cluster, with the exact fix for each finding.

The layers, one module each:

* :mod:`~webhook.doctor.collect` (``gather``) is the thin I/O shell: it reads the API into the
  plain data of :mod:`~webhook.doctor.facts` (Nodes with flannel's annotations and
  their conditions, the cluster-cidr sources, the flannel ConfigMaps and pods and
  their logs, the kubelet's sandbox events, running pods' IPs, flannel-guard's own
  objects). Only it imports the Kubernetes client, and only when doctor runs.
* :mod:`~webhook.doctor.sections` are pure functions over a
  :class:`~webhook.doctor.model.Context`, each returning structured findings with
  their fixes; they reuse the webhook's rules, so doctor and the webhook never
  judge differently. :mod:`~webhook.doctor.rank` orders them and names the root
  cause by an explicit rank, never by call order.
* :mod:`~webhook.doctor.render_text`, :mod:`~webhook.doctor.render_json` and
  :mod:`~webhook.doctor.render_html` show one :class:`~webhook.doctor.report.Report`;
  :mod:`~webhook.doctor.cli` is the command line.

Which cluster-cidr the fixes aim at: the effective one of
:func:`webhook.discovery.resolve` (``--cluster-cidr`` override, then
kube-controller-manager, kubeadm-config, kube-proxy); when no source holds a value
(``kubeadm init`` without ``--pod-network-cidr``), flannel's own ``Network``.
Every finding carries its fix twice: as text to paste and as a dict in
``--output json`` that a script can apply. Exit codes: 0 healthy, 1 findings,
2 the cluster could not be read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from webhook.doctor.cli import add_parser, main, run
from webhook.doctor.diagnose import diagnose
from webhook.doctor.facts import ClusterFacts, ConfigMapFacts, NodeFacts, PodFacts
from webhook.doctor.render_json import render_json
from webhook.doctor.render_text import render_text
from webhook.doctor.report import EXIT_FINDINGS, EXIT_HEALTHY, EXIT_UNREADABLE, DoctorFinding, Fix, Report

if TYPE_CHECKING:
    from webhook.doctor.collect import ClusterUnreadable, gather

__all__ = [
    "EXIT_FINDINGS",
    "EXIT_HEALTHY",
    "EXIT_UNREADABLE",
    "ClusterFacts",
    "ClusterUnreadable",
    "ConfigMapFacts",
    "DoctorFinding",
    "Fix",
    "NodeFacts",
    "PodFacts",
    "Report",
    "add_parser",
    "diagnose",
    "gather",
    "main",
    "render_json",
    "render_text",
    "run",
]


def __getattr__(name: str) -> Any:
    """``gather`` and ``ClusterUnreadable`` load the Kubernetes client: imported on first use."""
    if name in ("gather", "ClusterUnreadable"):
        from webhook.doctor import collect as module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

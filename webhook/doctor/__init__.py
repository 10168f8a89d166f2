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
* :mod:`~webhook.doctor.text_report`, :mod:`~webhook.doctor.json_report` and
  :mod:`~webhook.doctor.html_report` show one :class:`~webhook.doctor.report.Report`;
  :mod:`~webhook.doctor.cli` is the command line.

Which cluster-cidr the fixes aim at: the effective one of
:func:`webhook.core.resolve.resolve` (``--cluster-cidr`` override, then
kube-controller-manager, kubeadm-config, kube-proxy); when no source holds a value
(``kubeadm init`` without ``--pod-network-cidr``), flannel's own ``Network``.
Every finding carries its fix twice: as text to paste and as a dict in
``--output json`` that a script can apply. Exit codes: 0 healthy, 1 findings,
2 the cluster could not be read.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from webhook.doctor.cli import add_parser, main, run
    from webhook.doctor.collect import ClusterUnreadable, gather
    from webhook.doctor.diagnosis import diagnose
    from webhook.doctor.facts import ClusterFacts, ConfigMapFacts, NodeFacts, PodFacts
    from webhook.doctor.json_report import render_json
    from webhook.doctor.report import EXIT_FINDINGS, EXIT_HEALTHY, EXIT_UNREADABLE, DoctorFinding, Fix, Report
    from webhook.doctor.text_report import render_text

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


#: Where each public name lives. Imported on first use: ``flannel-guard check`` builds the
#: command line (``doctor``'s parser included) without loading the rules' crypto or the
#: Kubernetes client, which only ``collect`` imports.
_HOMES = {
    "add_parser": "cli", "main": "cli", "run": "cli",
    "ClusterUnreadable": "collect", "gather": "collect",
    "diagnose": "diagnosis",
    "ClusterFacts": "facts", "ConfigMapFacts": "facts", "NodeFacts": "facts", "PodFacts": "facts",
    "render_json": "json_report", "render_text": "text_report",
    "EXIT_FINDINGS": "report", "EXIT_HEALTHY": "report", "EXIT_UNREADABLE": "report",
    "DoctorFinding": "report", "Fix": "report", "Report": "report",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"webhook.doctor.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

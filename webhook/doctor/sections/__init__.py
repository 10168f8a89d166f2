"""The pure sections of the diagnosis: each reads a :class:`~webhook.doctor.model.Context`, returns findings.

``cidr`` (cluster-cidr sources, kube-controller-manager's allocation, capacity),
``flannel_config`` (the flannel ConfigMaps), ``nodes`` (podCIDRs), ``pods`` (the
flannel pods), ``datapath`` (what flannel and the kubelet wrote: annotations,
conditions, events, log lines), ``guard`` (flannel-guard itself). Which finding is
the root cause is decided in :mod:`webhook.doctor.rank`, never by the order here.
"""

"""flannel-guard: an admission webhook that keeps flannel and Node podCIDRs consistent."""

__version__ = "0.1.0"

"""The pure core: CIDR math, kube-controller-manager's cidrset, the node model, the claims as
data, the cluster-cidr sources as parsers, and the rules. No I/O, and nothing here imports
from the layers above (``control``, ``kube``, ``service``): the contract in pyproject.toml."""

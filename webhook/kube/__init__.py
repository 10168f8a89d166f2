"""The Kubernetes API: watches (Nodes, Leases, the cluster-cidr sources), the Lease claim store,
Events, leader election and the assigning loop. The only layer that calls the API while serving.

Importing this package first makes ``import kubernetes.client`` load only what it needs:
the ``kubernetes`` package's own ``__init__`` imports every subpackage (``dynamic`` with
jsonschema and kubernetes-validate, ``stream`` with websocket-client, ``informer``,
``watch``), about 3.2 MB of RSS that the server never uses (bench/RESULTS.md, issue 16).
Its subpackages are plain packages, so each still loads, and in full, when imported.
"""

from __future__ import annotations

import importlib.util
import sys


def _kubernetes_on_demand() -> None:
    """Register the ``kubernetes`` package without running its ``__init__`` (unless already imported)."""
    if "kubernetes" in sys.modules:
        return
    spec = importlib.util.find_spec("kubernetes")
    if spec is None or not spec.submodule_search_locations:
        return
    # module_from_spec sets __path__, __spec__ and __loader__; exec_module, the eager part, is skipped.
    module = importlib.util.module_from_spec(spec)
    module.__getattr__ = _package_attribute  # type: ignore[attr-defined]  # PEP 562
    sys.modules["kubernetes"] = module


def _package_attribute(name: str) -> object:
    """What the skipped ``__init__`` would have defined besides its imports: ``__version__``."""
    if name == "__version__":  # kubernetes.dynamic.discovery imports it, for one
        from importlib.metadata import version

        return version("kubernetes")
    raise AttributeError(f"module 'kubernetes' has no attribute {name!r}")


_kubernetes_on_demand()

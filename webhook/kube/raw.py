"""One Kubernetes API request with raw JSON both ways, through a ``kubernetes`` ApiClient.

The generated API methods of the ``kubernetes`` client 37 validate every argument with
pydantic (a dict body becomes a model and is serialised back) before the request is
made; on a claimed write that was most of its CPU. This goes one layer down, to the
ApiClient's ``param_serialize`` (URL, headers, auth: bearer token refresh, client
certificates, as the generated methods do) and ``call_api`` (its urllib3 pool), and
maps a non-2xx answer to the same :class:`~kubernetes.client.exceptions.ApiException`
the generated methods raise.
"""

from __future__ import annotations

from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

__all__ = ["raw_request"]


# The HTTP method of each verb of the generated client's method names.
_METHODS = {"create": "POST", "read": "GET", "list": "GET", "replace": "PUT", "patch": "PATCH",
            "delete": "DELETE"}


def raw_request(api: kubernetes.client.ApiClient, operation: str, path: str, *,
                body: dict[str, Any] | None = None, query: list[tuple[str, str]] | None = None,
                timeout: float | tuple[float, float] | None = None) -> bytes:
    """The generated method ``operation`` (e.g. ``"create_namespaced_lease"``) on ``path``, raw.

    ``operation`` names the method this request stands for, so that its HTTP method follows
    from it and the RBAC test (tests/test_manifests.py) finds the grant it needs.
    Returns the answer's bytes; raises ``ApiException`` unless 2xx.
    """
    method = _METHODS[operation.partition("_")[0]]
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    method, url, headers, payload, post = api.param_serialize(
        method=method, resource_path=path, query_params=query or [], header_params=headers,
        body=body, auth_settings=["BearerToken"])
    response = api.call_api(method, url, headers, payload, post, _request_timeout=timeout)
    response.read()
    if not 200 <= response.status <= 299:
        text = response.data.decode("utf-8", "replace") if response.data else ""
        raise ApiException.from_response(http_resp=response, body=text, data=None)
    return response.data or b""

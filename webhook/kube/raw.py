"""Kubernetes API requests with raw JSON both ways, through a ``kubernetes`` ApiClient.

The generated API classes of the ``kubernetes`` client 37 cost twice: importing
``CoreV1Api`` alone loads ~20 MB of model and signature code, and every call validates
its arguments with pydantic (a dict body becomes a model and is serialised back, ~215 µs
for a Lease). flannel-guard reads and writes raw JSON anyway, so it goes one layer
down: the ApiClient's ``param_serialize`` (URL, headers, auth: bearer token refresh,
client certificates, exactly as the generated methods do) and ``call_api`` (its urllib3
pool), and maps a non-2xx answer to the same
:class:`~kubernetes.client.exceptions.ApiException` the generated methods raise.

Each request names the generated method it stands for (``"list_node"``,
``"create_namespaced_lease"``): its HTTP method follows from the name, and the RBAC
test (tests/test_manifests.py) reads those names to prove the grants match the calls.
"""

from __future__ import annotations

from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

__all__ = ["raw_request", "raw_response"]

# The HTTP method of each verb of the generated client's method names.
_METHODS = {"create": "POST", "read": "GET", "list": "GET", "replace": "PUT", "patch": "PATCH",
            "delete": "DELETE"}
# Query parameters, by the generated methods' argument names (the API's names on the right).
_QUERY = {"watch": "watch", "resource_version": "resourceVersion", "label_selector": "labelSelector",
          "field_selector": "fieldSelector", "limit": "limit", "_continue": "continue",
          "timeout_seconds": "timeoutSeconds", "allow_watch_bookmarks": "allowWatchBookmarks"}


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def raw_response(api: kubernetes.client.ApiClient, operation: str, path: str, *,
                 body: Any = None, content_type: str | None = None,
                 _request_timeout: float | tuple[float, float] | None = None,
                 _preload_content: bool = False, **params: Any) -> Any:
    """The generated method ``operation`` on ``path`` (already quoted): its urllib3 response, unread.

    ``params`` are the generated method's query arguments (``label_selector=``, ``watch=``,
    ``_continue=``...; ``None`` is left out). The caller reads ``.data`` or streams it, and
    closes it. Raises ``ApiException`` unless 2xx (the body read and kept in it).
    ``_preload_content`` is accepted for the generated methods' signature: the answer is
    always raw.
    """
    method = _METHODS[operation.partition("_")[0]]
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type or "application/json"
    query = [(_QUERY[k], _value(v)) for k, v in params.items() if v is not None]
    method, url, headers, payload, post = api.param_serialize(
        method=method, resource_path=path, query_params=query, header_params=headers,
        body=body, auth_settings=["BearerToken"])
    response = api.call_api(method, url, headers, payload, post, _request_timeout=_request_timeout)
    if not 200 <= response.status <= 299:
        response.read()
        text = response.data.decode("utf-8", "replace") if response.data else ""
        raise ApiException.from_response(http_resp=response, body=text, data=None)
    return response.response


def raw_request(api: kubernetes.client.ApiClient, operation: str, path: str, *,
                body: Any = None, content_type: str | None = None,
                timeout: float | tuple[float, float] | None = None, **params: Any) -> bytes:
    """:func:`raw_response`, read in full: the answer's bytes."""
    response = raw_response(api, operation, path, body=body, content_type=content_type,
                            _request_timeout=timeout, **params)
    try:
        return response.data or b""
    finally:
        response.release_conn()

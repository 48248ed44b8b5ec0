"""The gateway's calls to the API server, as typed async methods that raise gateway errors.

Thin I/O shell over the shared layer (`nest_kube.Api`: aiohttp on the gateway's own loop, no
threads): each method names what it asks for, and every `ApiError` becomes one of the gateway's
typed errors with the API server's own message and field causes kept, so a problem names what
the cluster rejected. The watches that feed routing are `nest_kube.Informer`s (see gateway.app);
this module holds no loop of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import (
    ApiUnavailable,
    BadRequest,
    Conflict,
    FieldError,
    Forbidden,
    GatewayError,
    InvalidInput,
    NotFound,
    Upstream,
)
from nest_kube import Api, ApiError
from nest_kube.resources import (
    CONFIGMAPS,
    SANDBOX_DEPLOYMENTS,
    SANDBOX_ENDPOINTS,
    SANDBOX_REPLICASETS,
    SANDBOXES,
    SUBJECT_ACCESS_REVIEWS,
    TOKEN_REVIEWS,
    Resource,
)

Obj = dict[str, Any]


def api_error(exc: ApiError, what: str) -> GatewayError:
    """The gateway error for an API server failure on `what` (e.g. "function ns/name")."""
    message = exc.message
    causes = [FieldError(str(c.get("field", "")), str(c.get("message", ""))) for c in exc.causes]
    if exc.status == 0 or exc.status == 429 or exc.status >= 500:  # away or overloaded
        return ApiUnavailable(f"API server unavailable for {what}: {message}")
    if exc.status == 404:
        return NotFound(f"{what} not found")
    if exc.status == 409:
        return Conflict(f"{what}: {message}")
    if exc.status == 422:
        return InvalidInput(f"{what} rejected by the API server: {message}", causes)
    if exc.status == 400:
        return BadRequest(f"{what}: {message}")
    if exc.status == 403 and message.startswith("admission webhook"):
        # An admission webhook (SandboxRestriction) refused the object itself, naming the
        # field: the caller's to fix, not the gateway's credentials.
        return Forbidden(f"{what}: {message}")
    # Other 401/403 here are the gateway's own credentials failing: the caller cannot fix that.
    return Upstream(f"API server answered {exc.status} for {what}: {message}")


class Kube:
    """The API calls the gateway makes with its own identity."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def _get(self, resource: Resource, ns: str, name: str, what: str) -> Obj:
        try:
            return await self.api.get(resource, ns, name)
        except ApiError as exc:
            raise api_error(exc, what) from exc

    async def _list(self, resource: Resource, ns: str, what: str, selector: str = "") -> list[Obj]:
        try:
            found = await self.api.list(resource, ns, label_selector=selector)
        except ApiError as exc:
            raise api_error(exc, what) from exc
        return list(found.get("items") or [])

    async def get_deployment(self, ns: str, name: str) -> Obj:
        return await self._get(SANDBOX_DEPLOYMENTS, ns, name, f"function {ns}/{name}")

    async def list_deployments(self, ns: str) -> list[Obj]:
        return await self._list(SANDBOX_DEPLOYMENTS, ns, f"functions of {ns}")

    async def create_deployment(self, ns: str, body: Obj) -> Obj:
        try:
            return await self.api.create(SANDBOX_DEPLOYMENTS, ns, body)
        except ApiError as exc:
            raise api_error(exc, f"function {ns}/{body['metadata']['name']}") from exc

    async def replace_deployment(self, ns: str, name: str, body: Obj) -> Obj:
        try:
            return await self.api.replace(SANDBOX_DEPLOYMENTS, ns, name, body)
        except ApiError as exc:
            raise api_error(exc, f"function {ns}/{name}") from exc

    async def delete_deployment(self, ns: str, name: str) -> None:
        try:
            await self.api.delete(SANDBOX_DEPLOYMENTS, ns, name, propagation="Background")
        except ApiError as exc:
            raise api_error(exc, f"function {ns}/{name}") from exc

    async def get_scale(self, ns: str, name: str) -> Obj:
        try:
            return await self.api.get(SANDBOX_DEPLOYMENTS, ns, name, subresource="scale")
        except ApiError as exc:
            raise api_error(exc, f"function {ns}/{name}") from exc

    async def patch_scale(self, ns: str, name: str, replicas: int) -> Obj:
        """Merge-patch the scale subresource: only for a user's PUT .../scale, authorised by
        SubjectAccessReview first (cold starts are the operator's autoscaler's to scale)."""
        body: Obj = {"spec": {"replicas": replicas}}
        try:
            return await self.api.patch(SANDBOX_DEPLOYMENTS, ns, name, body, subresource="scale")
        except ApiError as exc:
            raise api_error(exc, f"scale of function {ns}/{name}") from exc

    async def get_endpoints(self, ns: str, name: str) -> Obj | None:
        try:
            return await self._get(SANDBOX_ENDPOINTS, ns, name, f"endpoints {ns}/{name}")
        except NotFound:
            return None

    async def list_endpoints(self, ns: str) -> list[Obj]:
        return await self._list(SANDBOX_ENDPOINTS, ns, f"endpoints of {ns}")

    async def list_replicasets(self, ns: str, selector: str) -> list[Obj]:
        return await self._list(SANDBOX_REPLICASETS, ns, f"revisions in {ns}", selector)

    async def list_sandboxes(self, ns: str, selector: str) -> list[Obj]:
        return await self._list(SANDBOXES, ns, f"sandboxes in {ns}", selector)

    async def find_configmap(self, ns: str, name: str) -> Obj | None:
        """A ConfigMap, or None when it is missing or the gateway may not read it (an optional
        setting such as kube-public/local-registry-hosting: absent is an answer, not a fault)."""
        try:
            return await self.api.get(CONFIGMAPS, ns, name)
        except ApiError as exc:
            if exc.status in (403, 404):
                return None
            raise api_error(exc, f"ConfigMap {ns}/{name}") from exc

    async def _review(self, resource: Resource, spec: Mapping[str, Any], what: str) -> Obj:
        body: Obj = {"apiVersion": resource.api_version, "kind": resource.kind, "spec": spec}
        try:
            return await self.api.create(resource, None, body)
        except ApiError as exc:
            raise api_error(exc, what) from exc

    async def token_review(self, token: str) -> Obj:
        return await self._review(TOKEN_REVIEWS, {"token": token}, "token review")

    async def access_review(self, spec: Obj) -> Obj:
        return await self._review(SUBJECT_ACCESS_REVIEWS, spec, "access review")

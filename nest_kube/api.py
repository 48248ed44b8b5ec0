"""The layer's protocol: the API verbs every component uses, their errors, and watch events.

Why a protocol: the components' I/O shells are written against `Api`, not against a client
library, so the same shell runs on `HttpApi` (aiohttp, one event loop, no threads) in a cluster
and on `FakeApi` in unit tests, where routing, retries and conflicts can be exercised without a
server. Objects are plain JSON dicts exactly as the API server sends them (camelCase keys); the
pydantic models of `crds` parse them at each component's boundary.

Errors: every answer that is not 2xx is an `ApiError` carrying the HTTP status and the API
server's own `Status` (message, reason, causes), so callers decide on `status` and report the
server's words. No answer at all (refused, reset, timed out) is `Unreachable`, an `ApiError`
with status 0, so a caller that only cares "did it work" catches one type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from nest_kube.resources import Obj, Resource

MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
STRATEGIC_MERGE_PATCH: Final = "application/strategic-merge-patch+json"

# Watch event types, as the API server spells them.
ADDED: Final = "ADDED"
MODIFIED: Final = "MODIFIED"
DELETED: Final = "DELETED"
BOOKMARK: Final = "BOOKMARK"
ERROR: Final = "ERROR"


class ApiError(Exception):
    """The API server answered `status` (not 2xx); `body` is its Status object when it sent one."""

    def __init__(self, status: int, reason: str = "", body: Mapping[str, Any] | None = None):
        self.status = status
        self.body: Obj = dict(body or {})
        self.reason = str(self.body.get("reason") or reason or "")
        super().__init__(f"{status} {self.reason}: {self.message}")

    @property
    def message(self) -> str:
        return str(self.body.get("message") or self.reason or "no message")

    @property
    def causes(self) -> list[Obj]:
        """The field causes of a validation failure (`details.causes`), possibly empty."""
        return list((self.body.get("details") or {}).get("causes") or [])

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> ApiError:
        """The error a `Status` object describes (the object of a watch ERROR event)."""
        return cls(int(status.get("code") or 500), str(status.get("reason") or ""), status)


class Unreachable(ApiError):
    """No answer: connection refused or reset, TLS failure, or a timeout."""

    def __init__(self, detail: str) -> None:
        super().__init__(0, "Unreachable", {"message": detail})


def is_expired(error: ApiError) -> bool:
    """410 Gone: the resourceVersion asked for is older than the server keeps (compacted)."""
    return error.status == 410


def is_too_large_version(error: ApiError) -> bool:
    """A list at a resourceVersion the server's cache has not reached (1.17-1.18 say it so)."""
    if error.status != 504:
        return False
    causes = [str(cause.get("reason") or cause.get("message") or "") for cause in error.causes]
    return any("ResourceVersionTooLarge" in c or "Too large resource version" in c for c in causes)


def is_transient(error: ApiError) -> bool:
    """Worth retrying the same request after a pause: no answer, throttled, or a server fault."""
    return error.status in (0, 429) or error.status >= 500


@dataclass(frozen=True)
class WatchEvent:
    """One line of a watch stream: ADDED, MODIFIED, DELETED or BOOKMARK and its object."""

    type: str
    object: Obj = field(default_factory=dict)


class Api(Protocol):
    """What a component may ask of the API server. Namespace None: cluster-scoped or all."""

    async def get(
        self, resource: Resource, namespace: str | None, name: str, *, subresource: str = ""
    ) -> Obj: ...

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str = "",
        field_selector: str = "",
        resource_version: str | None = None,
    ) -> Obj:
        """The List object: `items` and `metadata.resourceVersion` to watch from."""
        ...

    async def create(
        self, resource: Resource, namespace: str | None, body: Mapping[str, Any]
    ) -> Obj: ...

    async def replace(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str = "",
    ) -> Obj: ...

    async def patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        content_type: str = MERGE_PATCH,
        subresource: str = "",
    ) -> Obj: ...

    async def delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: Mapping[str, str] | None = None,
    ) -> Obj: ...

    def watch(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        resource_version: str,
        label_selector: str = "",
        field_selector: str = "",
        timeout_seconds: int = 300,
        bookmarks: bool = True,
    ) -> AsyncIterator[WatchEvent]:
        """Events after `resource_version` until the server ends the watch. An ERROR event is
        raised as the `ApiError` it carries (410 when the version is too old)."""
        ...

    async def close(self) -> None: ...

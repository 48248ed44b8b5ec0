"""The errors the function API's conversions raise, each knowing its RFC 7807 problem.

They live here, not in the gateway, because the CLI runs the same conversions and must not
import the gateway to catch them; the gateway's own errors (authentication, queues, timeouts)
subclass `ApiError`, so its problem writer stays total over both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import ValidationError


@dataclass(frozen=True)
class FieldError:
    """One rejected input: where (`field`, dotted wire names) and why."""

    field: str
    message: str


class ApiError(Exception):
    """Base of every error the function API reports; `status`/`kind` choose the problem."""

    status: ClassVar[int] = 500
    kind: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.headers: dict[str, str] = {}


class BadRequest(ApiError):
    status, kind, title = 400, "bad-request", "Bad request"


class InvalidInput(ApiError):
    status, kind, title = 422, "invalid", "Invalid input"


class NotFound(ApiError):
    status, kind, title = 404, "not-found", "Not found"


class Upstream(ApiError):
    """The API server or a sandbox failed in a way the caller cannot fix."""

    status, kind, title = 502, "upstream", "Bad gateway"


def field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """pydantic's errors as dotted wire paths (`autoscaling.maxReplicas`), model errors at root."""
    found = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(part) for part in err["loc"])
        where = ".".join(p for p in (prefix, path) if p) or "(body)"
        found.append(FieldError(where, err["msg"]))
    return found


def invalid(exc: ValidationError, what: str, prefix: str = "") -> InvalidInput:
    """An InvalidInput naming the first bad field in its detail and listing all of them."""
    errors = field_errors(exc, prefix)
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return InvalidInput(f"{what}: {first.field}: {first.message}{more}", errors)

"""Typed errors of the gateway, each knowing its RFC 7807 problem: status, type and title.

Downstream platforms switch on `type` (a stable URI fragment) and show `detail`; a client that
sent a bad field reads `errors[].field`. Keeping every failure the gateway can report in this one
module is what lets `problem()` be total: anything not listed here is a bug, reported as 500.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nest_api import errors as api
from sandbox import limits
from sandbox.limits import PROBLEM_BASE as PROBLEM_BASE  # one base for every problem type

PROBLEM_JSON = "application/problem+json"
# The function API's errors (nest_api, shared with the CLI) are the gateway's too, with their base
# as GatewayError: every failure the gateway reports is still importable from this one module.
GatewayError = api.ApiError
FieldError = api.FieldError
BadRequest = api.BadRequest
InvalidInput = api.InvalidInput
NotFound = api.NotFound
Upstream = api.Upstream
field_errors = api.field_errors
invalid = api.invalid


class Unauthenticated(GatewayError):
    status, kind, title = 401, "unauthenticated", "Unauthenticated"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers["WWW-Authenticate"] = 'Bearer realm="nest"'


class Forbidden(GatewayError):
    status, kind, title = 403, "forbidden", "Forbidden"


class MethodNotAllowed(GatewayError):
    status, kind, title = 405, "method-not-allowed", "Method not allowed"


class Conflict(GatewayError):
    status, kind, title = 409, "conflict", "Conflict"


class PayloadTooLarge(GatewayError):
    status, kind, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(GatewayError):
    status, kind, title = 415, "unsupported-media-type", "Unsupported media type"


class QueueFull(GatewayError):
    """The activator's queue of a function at zero is full."""

    status, kind, title = 503, "queue-full", "Function busy scaling up"


class NotConfigured(GatewayError):
    """An operation needs a setting the gateway was started without (the detail names the flag)."""

    status, kind, title = 503, "not-configured", "Not configured"


class ApiUnavailable(GatewayError):
    """The API server did not answer (or answered 429/5xx): the caller should retry, not fix."""

    status, kind, title = 503, "api-unavailable", "API server unavailable"
    RETRY_AFTER_SECONDS = 5

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = str(self.RETRY_AFTER_SECONDS)


class NotReady(GatewayError):
    """The gateway has not yet listed the cluster's functions and endpoints."""

    status, kind, title = 503, "not-ready", "Not ready"


class Timeout(GatewayError):
    """A held request waited too long for a sandbox, or an invocation exceeded its timeout."""

    status, kind, title = 504, "timeout", "Timed out"


@dataclass(frozen=True)
class Problem:
    """An RFC 7807 problem document ready to serialise."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def problem(error: GatewayError, instance: str | None = None) -> Problem:
    """The problem document of `error`; `instance` is the request path."""
    body = limits.problem(error, instance)
    if error.errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in error.errors]
    return Problem(error.status, body, dict(error.headers))

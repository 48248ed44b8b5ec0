"""Typed errors of the runtime daemon and its client, and their one mapping to HTTP.

Why one module: the data plane, the control API and the client must agree on which failure is
which status code and which `error` word; keeping the table here makes that agreement a single
edit. Isolation errors are translated here, not scattered through handlers.
"""

from __future__ import annotations

from isolation import errors as iso


class RuntimeAPIError(Exception):
    """A non-success answer from the runtime's control API, as seen by `RuntimeClient`."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message


class SandboxNotFoundError(RuntimeAPIError):
    """The runtime has no sandbox with this id (after a runtime restart: none at all)."""


class SandboxExistsError(RuntimeAPIError):
    """A sandbox with this id exists; remove it before creating it again."""


class CreateFailed(RuntimeAPIError):
    """The sandbox was recorded but its function failed to load; `error` is the reason."""


class RuntimeUnavailable(Exception):
    """The control socket does not answer (runtime not started, restarting, or gone)."""


# isolation error -> (HTTP status, `error` word when the exception carries none)
HTTP_STATUS: dict[type[iso.IsolationError], tuple[int, str]] = {
    iso.SandboxNotFound: (404, "NotFound"),
    iso.SandboxExists: (409, "AlreadyExists"),
    iso.LoadError: (422, "Error"),
    iso.NotRunning: (503, "NotRunning"),
    iso.Overloaded: (429, "TooManyRequests"),
    iso.InvokeTimeout: (504, "Timeout"),
    iso.SandboxCrashed: (502, "Crashed"),
    iso.IllegalTransition: (409, "Conflict"),
}

CLIENT_ERRORS: dict[int, type[RuntimeAPIError]] = {
    404: SandboxNotFoundError,
    409: SandboxExistsError,
    422: CreateFailed,
}


def http_error(exc: iso.IsolationError) -> tuple[int, str, str]:
    """(status, error word, message) for an isolation error."""
    for kind in type(exc).__mro__:
        if kind in HTTP_STATUS:
            status, word = HTTP_STATUS[kind]
            break
    else:
        status, word = 500, "Error"
    if isinstance(exc, iso.LoadError):
        return status, exc.reason, exc.message
    return status, word, str(exc)


def client_error(status: int, error: str, message: str) -> RuntimeAPIError:
    return CLIENT_ERRORS.get(status, RuntimeAPIError)(status, error, message)

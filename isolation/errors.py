"""Typed errors of the isolation backends, in one place.

Why one module: the runtime daemon maps these to HTTP status codes and to the CamelCase reasons the
sidecar copies into Kubernetes status. Keeping every error here makes that mapping exhaustive and
keeps backends from inventing ad-hoc exceptions.
"""

from __future__ import annotations


class IsolationError(Exception):
    """Base of every error raised by an isolation backend."""


class SandboxNotFound(IsolationError):
    """No sandbox with this id is known to the backend."""


class SandboxExists(IsolationError):
    """A sandbox with this id already exists (remove it first, as with CRI)."""


class IllegalTransition(IsolationError):
    """A state change that the sandbox state machine does not allow."""


class LoadError(IsolationError):
    """The function could not be loaded: the sandbox failed to become ready.

    `reason` is a CamelCase word the sidecar copies verbatim into Kubernetes status
    (`SyntaxError`, `ImportError`, `HandlerNotFound`, `Error`); `message` is for humans.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class NotRunning(IsolationError):
    """The sandbox exists but cannot take invocations (stopped, failed or restarting)."""


class Overloaded(IsolationError):
    """The sandbox's concurrency limit and its wait queue are both full."""


class InvokeTimeout(IsolationError):
    """The invocation overran the sandbox's timeout."""


class SandboxCrashed(IsolationError):
    """The sandbox process died while the invocation was in flight."""


class ThreadsExhausted(NotRunning):
    """Every thread the sandbox may occupy is taken (held by calls that overran their timeout)."""

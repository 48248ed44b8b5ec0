"""Typed errors of the `nest` package; the CLI turns them into one-line messages."""


class NestError(Exception):
    """An error the user can act on; its message says what to do."""

    # The process exit code `nest` returns for it; scripts switch on these (docs/cli.md).
    exit_code: int = 1


class ApiError(NestError):
    """The Kubernetes API server refused or failed a request of a function command."""


class NotFoundError(NestError):
    """A function (SandboxDeployment), revision or sandbox the user named does not exist."""


class InvalidFunctionError(NestError):
    """What `nest deploy` was given cannot become a function (bad path, too large, bad value)."""


class FunctionFailedError(NestError):
    """The function's sandboxes failed for good (ImportError, ...) or its rollout stalled."""


class WaitTimeoutError(NestError):
    """Waiting for a function to become ready (or a rollout to finish) ran out of time."""

    exit_code = 3


class InvokeFailedError(NestError):
    """The function answered an invocation with a non-2xx status (its body is still printed)."""

    exit_code = 4

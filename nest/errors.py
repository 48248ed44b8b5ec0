"""Typed errors of the `nest` package; the CLI turns them into one-line messages."""


class NestError(Exception):
    """An error the user can act on; its message says what to do."""


class ClusterError(NestError):
    """The local control plane could not be built, started, stopped or reached."""


class UnsupportedMachineError(ClusterError):
    """This machine cannot run the local control plane (no apt/Debian)."""


class RunnerError(ClusterError):
    """The local node's process runner could not run or account for a pod."""

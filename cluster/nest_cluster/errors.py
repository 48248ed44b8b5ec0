"""Typed errors of the local cluster, reported by `nest-cluster` as one line like the `nest`
command's: they are `NestError`s, so a test or script catching those catches these too."""

from nest.errors import NestError


class ClusterError(NestError):
    """The local control plane could not be built, started, stopped or reached."""


class UnsupportedMachineError(ClusterError):
    """This machine cannot run the local control plane (no apt/Debian)."""


class RunnerError(ClusterError):
    """The local node's process runner could not run or account for a pod."""

"""Typed errors of the sidecar. Each carries the CamelCase reason copied into Sandbox status."""


class SidecarError(Exception):
    """Base of the sidecar's own errors; `reason` goes into Sandbox status verbatim."""

    reason = "Error"


class CodeFetchFailed(SidecarError):
    """The code could not be downloaded (network, HTTP status, size)."""

    reason = "CodeFetchFailed"


class ChecksumMismatch(SidecarError):
    """The downloaded code's SHA-256 is not the one the Sandbox pinned."""

    reason = "ChecksumMismatch"


class ConfigMapNotFound(SidecarError):
    """The ConfigMap (or the key) named as the code source does not exist."""

    reason = "ConfigMapNotFound"


class InvalidCodeArchive(SidecarError):
    """The archive is not a zip/tar.gz/.py we can unpack, or tries to escape its directory."""

    reason = "InvalidCodeArchive"


class CodePathNotFound(SidecarError):
    """A `path` source names a directory that is not in the pool image."""

    reason = "CodePathNotFound"

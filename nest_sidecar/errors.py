"""Typed errors of the sidecar, each with the CamelCase reason copied into Sandbox status.

Why a module of its own: the worker turns any of these into a reason and a message the user reads
in `kubectl get sbx`, so every failure the fetcher or the spec check can meet needs a type that
says which reason it is (permanent ones are listed in `crds.sandbox.PERMANENT_FAILURE_REASONS`)
and a message that names its cause: the file, the address, the exception.
"""

from __future__ import annotations

from pydantic import ValidationError

from sandbox.layers import shown_name as shown_name  # one rule for names in messages


class SidecarError(Exception):
    """Base of the sidecar's own errors; `reason` goes into Sandbox status verbatim."""

    reason = "Error"


class InvalidSpec(SidecarError):
    """The Sandbox cannot run as written (a file name the file system refuses, say): permanent."""

    reason = "InvalidSpec"


class CodeFetchFailed(SidecarError):
    """The code could not be downloaded or written (network, HTTP status, size, disk): retried."""

    reason = "CodeFetchFailed"


class ChecksumMismatch(SidecarError):
    """The downloaded code's SHA-256 is not the one the Sandbox pinned."""

    reason = "ChecksumMismatch"


class ConfigMapNotFound(SidecarError):
    """The ConfigMap (or the key) named as the code source does not exist."""

    reason = "ConfigMapNotFound"


class InvalidCodeArchive(SidecarError):
    """The archive is not a zip/tar.gz/.py we can unpack, or its files cannot be laid out."""

    reason = "InvalidCodeArchive"


class CodePathNotFound(SidecarError):
    """A `path` source names a directory that is not in the pool image."""

    reason = "CodePathNotFound"


def describe_exception(exc: BaseException) -> str:
    """`Type: text`, or the type alone when the text is empty (aiohttp's timeouts, say)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def describe_validation(exc: ValidationError) -> str:
    """Every problem pydantic found, `field.path: message`, on one line.

    The first line of `str(exc)` is only "N validation errors for Sandbox": a message cut there
    named nothing (the reported `1BAD-NAME` env case)."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or describe_exception(exc)

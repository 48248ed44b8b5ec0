"""Typed errors of the `crds` package.

Callers (the `nest crds` command, the gateway's OpenAPI generator, tests) need to tell "the
models cannot be expressed as a Kubernetes schema" apart from "the YAML on disk is unreadable"
without parsing messages; `crds` must not depend on `nest`, so the CLI maps these to its own
errors.
"""

from __future__ import annotations


class CrdError(Exception):
    """Base class of every error raised by `crds`."""


class SchemaError(CrdError):
    """A model produced a schema that Kubernetes would reject (not structural, unknown keys)."""


class ManifestError(CrdError):
    """A CRD file on disk cannot be read or parsed."""

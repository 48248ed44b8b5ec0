"""The decisions behind `nest deploy`, `nest rollout` and friends, kept free of I/O.

A command reads the cluster, calls one function here and writes or prints the result, so every
rule — what a path becomes, which handler is the default, when a function counts as ready or as
failed for good — has a fast unit test. Manifests are built by the function API's conversions
(`nest_api.convert`, which the gateway serves), so a function deployed with `nest` and one
created through the gateway's OpenAPI are the same object, labelled the same way.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from pydantic import ValidationError

from crds import SandboxDeployment
from crds.constants import FUNCTION_LABEL as FUNCTION_LABEL  # for nest.render and the tests
from crds.constants import NATIVE_DISTRIBUTIONS_ANNOTATION, TEMPLATE_HASH_LABEL
from crds.sandbox import PERMANENT_FAILURE_REASONS, native_distributions_value
from nest.errors import InvalidFunctionError, NestError, NotFoundError
from nest.names import MAX_INLINE_BYTES as MAX_INLINE_BYTES  # where the parser reads it
from nest.names import current_hash as current_hash  # kept here for the commands and tests
from nest.names import current_revision as current_revision
from nest.names import revision_of as revision_of
from nest_api import convert
from nest_api import models as m
from nest_api.errors import ApiError, NotFound

# Never code: caches, version control and virtualenvs found in a function's directory.
SKIPPED_DIRS = frozenset(
    {
        "__pycache__",
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "node_modules",
    }
)
SKIPPED_SUFFIXES = (".pyc", ".pyo")
P = ParamSpec("P")
T = TypeVar("T")
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class Code:
    """A function's code as read from disk: files by relative path, and its default handler."""

    files: dict[str, str]
    default_name: str
    # None when the file's name is no importable module name (e.g. hello-world.py).
    default_handler: str | None


def default_name(path: Path) -> str:
    """The function name for a file or directory: its stem as an RFC 1123 label."""
    stem = path.stem if path.is_file() else path.resolve().name
    name = _NOT_DNS.sub("-", stem.lower()).strip("-")
    if not name:
        raise InvalidFunctionError(f"cannot derive a function name from {path}: pass --name")
    return name[: m.DNS_LABEL_MAX].rstrip("-")


def default_handler(path: Path) -> str | None:
    """`<module>:handler` for a single file, `main:handler` for a directory."""
    if not path.is_file():
        return "main:handler"
    return f"{path.stem}:handler" if path.stem.isidentifier() else None


def _skipped(relative: Path) -> bool:
    return any(part in SKIPPED_DIRS for part in relative.parts[:-1]) or relative.name.endswith(
        SKIPPED_SUFFIXES
    )


def read_code(path: Path, limit: int = MAX_INLINE_BYTES) -> Code:
    """Read a `.py` file or a directory of files as inline source, refusing more than `limit`."""
    if not path.exists():
        raise InvalidFunctionError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix != ".py":
            raise InvalidFunctionError(f"{path}: a function file must be a .py file")
        found = {path.name: path}
    else:
        found = {
            p.relative_to(path).as_posix(): p
            for p in sorted(path.rglob("*"))
            if p.is_file() and not _skipped(p.relative_to(path))
        }
        if not found:
            raise InvalidFunctionError(f"{path}: the directory holds no files")
    total = sum(p.stat().st_size for p in found.values())
    if total > limit:
        raise InvalidFunctionError(
            f"{path}: {total} bytes of code is more than the {limit // 1024} KiB `nest deploy` "
            "sends inline; put the code in a ConfigMap (source.configMap) or at a pinned URL "
            "(source.url + sha256) and apply a SandboxDeployment instead"
        )
    files: dict[str, str] = {}
    for name, file in found.items():
        try:
            files[name] = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidFunctionError(f"{file}: inline code must be UTF-8 text ({exc})") from exc
    return Code(files=files, default_name=default_name(path), default_handler=default_handler(path))


@dataclass(frozen=True)
class DeployOptions:
    """What the user asked of `nest deploy`; None means "not given"."""

    name: str | None = None
    handler: str | None = None
    isolation: str | None = None
    interface: str | None = None
    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    memory: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def function_request(code: Code, opts: DeployOptions) -> m.FunctionCreate:
    """The gateway's create request for `code` with `opts` applied; raises InvalidFunctionError."""
    handler = opts.handler or code.default_handler
    if handler is None:
        modules = ", ".join(sorted(code.files))
        raise InvalidFunctionError(
            f"{modules} is not an importable module name: rename it or pass --handler"
        )
    body: dict[str, Any] = {
        "name": opts.name or code.default_name,
        "handler": handler,
        "files": code.files,
        "env": opts.env,
    }
    if opts.isolation is not None:
        body["isolation"] = opts.isolation
    if opts.interface is not None:
        body["interface"] = opts.interface
    if opts.replicas is not None:
        body["replicas"] = opts.replicas
    if opts.memory is not None:
        body["memory"] = opts.memory
    if opts.min_replicas is not None or opts.max_replicas is not None:
        if opts.max_replicas is None:
            raise InvalidFunctionError("--min needs --max: autoscaling needs an upper bound")
        body["autoscaling"] = {
            "minReplicas": opts.min_replicas or 0,
            "maxReplicas": opts.max_replicas,
        }
    try:
        return m.FunctionCreate.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'function'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidFunctionError(f"invalid function: {problems}") from exc


def manifest(namespace: str, request: m.FunctionCreate) -> dict[str, Any]:
    """The SandboxDeployment to create for a new function."""
    return gateway_call(convert.deployment_for, namespace, request).to_k8s()


def updated(stored: dict[str, Any], request: m.FunctionCreate) -> dict[str, Any]:
    """`stored` with its function replaced by `request` (replicas kept unless given)."""
    return gateway_call(convert.updated_deployment, stored, request)


def gateway_call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call one of the function API's pure conversions, turning its HTTP-minded errors into
    ours."""
    try:
        return fn(*args, **kwargs)
    except NotFound as exc:
        raise NotFoundError(exc.detail) from exc
    except ApiError as exc:
        fields = "; ".join(f"{e.field}: {e.message}" for e in exc.errors)
        raise InvalidFunctionError(f"{exc.detail}{': ' + fields if fields else ''}") from exc


@dataclass(frozen=True)
class Readiness:
    """Whether a function is ready, failed for good, or still on its way (and how far)."""

    ready: bool
    progress: str
    failure: str | None = None


def _phase_summary(sandboxes: list[dict[str, Any]]) -> str:
    counts = Counter(
        (s.get("status") or {}).get("reason") or (s.get("status") or {}).get("phase") or "Pending"
        for s in sandboxes
    )
    return ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))


def readiness(
    deployment: dict[str, Any], replicasets: list[dict[str, Any]], sandboxes: list[dict[str, Any]]
) -> Readiness:
    """Decide from objects already read whether `nest deploy --wait` is done.

    Ready is rollout complete (every desired sandbox runs the current template and is
    available). Failed is a current-revision sandbox Failed for a reason that would recur in any
    pod (ImportError, SyntaxError, ...: the operator does not replace those), or the rollout's
    progress deadline passing; transient failures (OOMKilled, Evicted) are replaced, so they
    only show in the progress line.
    """
    status = gateway_call(convert.rollout_status, deployment)
    name = deployment["metadata"]["name"]
    progress = f"waiting: {status.available_replicas}/{status.replicas} ready"
    if status.complete:
        return Readiness(True, f"{name}: {status.available_replicas}/{status.replicas} ready")
    if status.failed:
        return Readiness(False, progress, status.message)
    parsed = gateway_call(convert.parse, SandboxDeployment, deployment, "SandboxDeployment")
    observed = (parsed.status.observed_generation or 0) >= deployment["metadata"].get(
        "generation", 0
    )
    digest = current_hash(deployment, replicasets) if observed else None
    current = [
        s
        for s in sandboxes
        if digest is not None
        and (s["metadata"].get("labels") or {}).get(TEMPLATE_HASH_LABEL) == digest
    ]
    for sbx in sorted(current, key=lambda s: str(s["metadata"]["name"])):
        st = sbx.get("status") or {}
        if st.get("phase") == "Failed" and st.get("reason") in PERMANENT_FAILURE_REASONS:
            message = f": {st['message']}" if st.get("message") else ""
            return Readiness(
                False,
                progress,
                f"sandbox {sbx['metadata']['name']} of {name} failed: {st['reason']}{message}",
            )
    summary = _phase_summary(current)
    return Readiness(False, f"{progress} ({summary})" if summary else progress)


def undo_template(
    deployment: dict[str, Any], replicasets: list[dict[str, Any]], to_revision: int | None
) -> tuple[dict[str, Any], int]:
    """The template `nest rollout undo` writes back, and the revision it comes from."""
    return gateway_call(convert.undo_template, deployment, replicasets, to_revision)


def parse_env(pairs: list[str]) -> dict[str, str]:
    """`--env NAME=VALUE` arguments as a mapping; later ones win."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise NestError(f"--env {pair!r}: expected NAME=VALUE")
        env[key] = value
    return env


def with_source(
    deployment: dict[str, Any], source: dict[str, Any], natives: Sequence[str] = ()
) -> dict[str, Any]:
    """`deployment` with its template's code source replaced by `source` (a package or a build
    context); the template's native-distributions annotation is set to `natives` ("name==version",
    PEP 503 names as the pods' Leases spell them) or dropped, so a stale one never outlives the
    package it described. Checked against the model (a ref's or a context's pattern included)."""
    out = copy.deepcopy(deployment)
    out["spec"]["template"]["spec"]["function"]["source"] = source
    meta = out["spec"]["template"].setdefault("metadata", {})
    annotations = meta.get("annotations") or {}
    annotations.pop(NATIVE_DISTRIBUTIONS_ANNOTATION, None)
    if natives:
        annotations[NATIVE_DISTRIBUTIONS_ANNOTATION] = native_distributions_value(natives)
    meta["annotations"] = annotations
    SandboxDeployment.model_validate(out)
    return out

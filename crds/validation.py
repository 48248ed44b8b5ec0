"""The rules of a function's fields that the models and the admission webhook both apply.

Kubernetes 1.20's structural schemas cannot validate map keys, sizes in bytes as the API server
stores them, or tell null from "" (see docs/api.md), so these checks are plain functions: the
pydantic models in crds.sandbox call them in their validators, and operator/admission_specs.py
calls them on raw objects before the API server stores them. The grammars (handler, digest, OCI
reference, env name) live here too, one spelling for the CRD schema, the models, the function
API (nest_api) and the OCI client (sandbox.layers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated

from pydantic import WithJsonSchema

# `module:function`, or Lambda's `module.function` (the last dot separates the function), with
# dotted module paths in both: what isolation.host.parse_handler accepts.
HANDLER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*[:.][A-Za-z_][A-Za-z0-9_]*$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# A C identifier, as POSIX shells and Lambda allow; stricter than Kubernetes' own env names
# ([-._a-zA-Z][-._a-zA-Z0-9]*), whose `-` and `.` no shell or os.environ user can spell.
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A function package in an OCI registry, by digest only (a tag could be moved under a running
# function): `registry/repository@sha256:<hex>`, distribution's reference grammar with the
# registry always explicit and, as Docker reads references, recognisable as one (a dot, a port,
# localhost or an IPv6 address). Valid in RE2 (the API server's), ECMA-262 (OpenAPI's) and
# Python alike, hence no named groups; sandbox.layers parses references with this same pattern.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
OCI_REF_PATTERN = (
    rf"^(?:{_LABEL}(?:\.{_LABEL})+(?::[0-9]{{1,5}})?|{_LABEL}:[0-9]{{1,5}}|localhost"
    r"|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?)"
    rf"/{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*@sha256:[0-9a-f]{{64}}$"
)
_ENV_NAME_RE = re.compile(ENV_NAME_PATTERN)

# Inline code is stored in the object itself, and a SandboxDeployment's template is copied into
# its SandboxReplicaSet and every Sandbox, each one etcd write of at most 1.5 MiB (etcd's default
# --max-request-bytes). Sizes count what the API server stores: the JSON encoding (Go escapes
# quotes, backslashes, control characters and <, >, &). 1 MiB of files leaves 0.5 MiB for
# metadata: kubectl's last-applied annotation (the API server caps all annotations at 256 KiB),
# managedFields (which repeat every file name) and status.
INLINE_MAX_BYTES = 1024 * 1024
INLINE_FILE_MAX_BYTES = 512 * 1024
INLINE_MAX_FILES = 256
# Linux's NAME_MAX, for the whole relative path: a longer name failed with ENAMETOOLONG in the
# sidecar, and 256 names of this length keep managedFields small.
INLINE_NAME_MAX_BYTES = 255
_GO_ESCAPED_6 = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f<>&]")


def stored_size(text: str) -> int:
    """Bytes of `text` as a JSON string in the API server's encoding (Go's encoding/json)."""
    size = len(text.encode("utf-8", "surrogatepass")) + 2
    size += sum(text.count(ch) for ch in '"\\\n\r\t')  # two-byte escapes of one-byte characters
    size += 5 * len(_GO_ESCAPED_6.findall(text))  # \u00XX for one byte
    size += 3 * (text.count("\u2028") + text.count("\u2029"))  # \u2028 for three bytes
    return size


def _name_problem(name: str) -> str | None:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return "must be a relative path without empty, '.' or '..' parts"
    if "\0" in name or "\\" in name:
        return "must not contain NUL or backslash"
    if len(name.encode("utf-8", "surrogatepass")) > INLINE_NAME_MAX_BYTES:
        return f"is longer than {INLINE_NAME_MAX_BYTES} bytes"
    return None


def inline_problems(files: Mapping[str, object]) -> list[tuple[str, str]]:
    """What is wrong with inline files, as (file name or "", why); empty when they can be stored
    and written. The models and the admission webhook both apply it: Kubernetes 1.20's schemas
    cannot validate map keys, sizes in bytes, or refuse null apart from "" (see docs/api.md)."""
    problems: list[tuple[str, str]] = []
    names = set(files)
    if len(files) > INLINE_MAX_FILES:
        problems.append(("", f"{len(files)} files, more than {INLINE_MAX_FILES}"))
    total = 2
    for name, content in files.items():
        why = _name_problem(name)
        if why is None:
            parent = name.rsplit("/", 1)[0] if "/" in name else None
            while parent is not None:
                if parent in names:
                    why = f"is inside {parent!r}, which is a file"
                    break
                parent = parent.rsplit("/", 1)[0] if "/" in parent else None
        if why is not None:
            problems.append((name, f"file name {why}"))
        if content is None:
            problems.append((name, 'is null; an empty file is ""'))
            continue
        if not isinstance(content, str):
            problems.append((name, "content must be a string"))
            continue
        if "\ufffd" in content:
            problems.append(
                (
                    name,
                    "contains U+FFFD, which is what invalid UTF-8 becomes on the way in: "
                    "inline code must be UTF-8 text; ship binary files in a url archive",
                )
            )
        size = stored_size(content)
        if size > INLINE_FILE_MAX_BYTES:
            problems.append(
                (name, f"takes {size} bytes as stored, more than {INLINE_FILE_MAX_BYTES}")
            )
        total += size + stored_size(name) + 2
    if total > INLINE_MAX_BYTES:
        problems.append(
            (
                "",
                f"the files take {total} bytes as stored, more than {INLINE_MAX_BYTES}; "
                "larger code belongs in a url archive",
            )
        )
    return problems


def env_problems(env: Mapping[str, object]) -> list[tuple[str, str]]:
    """Invalid environment variables, as (name, why); shared by the models and the webhook."""
    problems = []
    for name, value in env.items():
        if not _ENV_NAME_RE.match(name):
            problems.append((name, f"name must match {ENV_NAME_PATTERN} (a C identifier)"))
        elif value is None:
            problems.append((name, 'value is null; an empty value is ""'))
    return problems


# Kubernetes 1.20's validator (go-openapi 0.19) takes "" for null, so a plain `type: string`
# refuses empty files and empty values with `Invalid value: "null"`; `nullable: true` lets ""
# through, and inline_problems/env_problems refuse a real null instead, in the models and in the
# admission webhook.
FileContent = Annotated[
    str,
    WithJsonSchema({"type": "string", "maxLength": INLINE_FILE_MAX_BYTES, "nullable": True}),
]
EnvValue = Annotated[str, WithJsonSchema({"type": "string", "nullable": True})]

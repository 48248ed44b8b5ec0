"""Dependency layers in every backend: the sandbox's import roots come right after its code, in
order, and each sandbox sees its own version of a package (confined ones may read their own
layers and no other)."""

from __future__ import annotations

import json
from pathlib import Path

from isolation.base import Backend, SandboxSpec
from isolation.contract import Request
from tests.dependency_layers import make_code, make_layer

PKG = "nest_conformance_dep"
HANDLER = f"""
import sys
import {PKG}
from {PKG} import sub

def handler(event, context):
    out = {{"version": {PKG}.VERSION, "sub": sub.SEEN, "helper": {PKG}.HELPER}}
    out["path"] = sys.path[:3]
    if event and event.get("read"):
        try:
            with open(event["read"]) as f:
                out["read"] = f.read()
        except OSError as exc:
            out["read"] = type(exc).__name__
    return out
"""


async def call(backend: Backend, sandbox_id: str, event: object = None) -> dict[str, object]:
    response = await backend.invoke(sandbox_id, Request(body=json.dumps(event).encode()))
    assert response.status == 200, response.body
    answer: dict[str, object] = json.loads(response.body)
    return answer


async def test_each_sandbox_imports_its_own_version_from_its_layers(
    backend: Backend, tmp_path: Path
) -> None:
    code = make_code(tmp_path / "code", HANDLER)
    v1 = make_layer(tmp_path / "v1", PKG, "1.0")
    v2 = make_layer(tmp_path / "v2", PKG, "2.0")
    empty = tmp_path / "empty"
    empty.mkdir()
    await backend.create(
        SandboxSpec("a", str(code), "main:handler", dependency_paths=(str(empty), str(v1)))
    )
    await backend.create(SandboxSpec("b", str(code), "main:handler", dependency_paths=(str(v2),)))
    a, b = await call(backend, "a"), await call(backend, "b")
    assert (a["version"], a["sub"], a["helper"]) == ("1.0", "1.0", "helper 1.0")
    assert (b["version"], b["sub"], b["helper"]) == ("2.0", "2.0", "helper 2.0")
    # The same search order in every mode: its code, then its layers in order.
    assert a["path"] == [str(code), str(empty), str(v1)]
    path = b["path"]
    assert isinstance(path, list) and path[:2] == [str(code), str(v2)]


async def test_a_sandbox_reads_its_layers_and_a_confined_one_no_other(
    backend: Backend, tmp_path: Path
) -> None:
    code = make_code(tmp_path / "code", HANDLER)
    mine = make_layer(tmp_path / "mine", PKG, "1.0")
    other = make_layer(tmp_path / "other", PKG, "2.0")
    await backend.create(SandboxSpec("a", str(code), "main:handler", dependency_paths=(str(mine),)))
    own = await call(backend, "a", {"read": str(mine / PKG / "__init__.py")})
    assert str(own["read"]).startswith("VERSION = '1.0'")
    theirs = await call(backend, "a", {"read": str(other / PKG / "__init__.py")})
    confined = getattr(backend, "principals", None) is not None
    assert (
        theirs["read"] == "PermissionError"
        if confined
        else str(theirs["read"]).startswith("VERSION = '2.0'")
    )

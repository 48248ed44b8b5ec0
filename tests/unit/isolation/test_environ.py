"""Namespace sandboxes' own os.environ (isolation.environ): the view alone, then in the backend."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from isolation import environ
from isolation.base import SandboxSpec
from isolation.contract import Request
from isolation.namespace import NamespaceBackend
from tests.conformance.support import write_function


def test_the_view_reads_the_overlay_over_the_real_environment_and_writes_into_it() -> None:
    real = {"PATH": "/bin", "HOME": "/root"}
    view = environ.SandboxEnviron(real)
    overlay = environ.Overlay({"TABLE": "orders", "HOME": "/scratch"})
    assert dict(view) == real  # outside any sandbox: the runtime's environment
    with environ.active(overlay):
        assert view["TABLE"] == "orders" and view.get("HOME") == "/scratch"
        assert view["PATH"] == "/bin"
        view["MODE"] = "fast"
        del view["PATH"]
        assert "PATH" not in view and dict(view) == {
            "TABLE": "orders", "HOME": "/scratch", "MODE": "fast"
        }  # fmt: skip
        with pytest.raises(KeyError):
            del view["PATH"]
        with pytest.raises(TypeError):
            view["N"] = 1  # type: ignore[assignment]
        assert (view | {"X": "1"})["X"] == "1"
    assert real == {"PATH": "/bin", "HOME": "/root"}  # nothing reached the runtime's
    assert "MODE" not in view
    view["RUNTIME"] = "yes"  # outside: the real environment
    assert real["RUNTIME"] == "yes"


@pytest.fixture
async def backend() -> AsyncIterator[NamespaceBackend]:
    impl = NamespaceBackend()
    yield impl
    await impl.close()


SOURCE = """
import os
AT_IMPORT = os.environ.get("GREETING")

def handler(event, context):
    if event and "set" in event:
        os.environ["GREETING"] = event["set"]
    return {"import": AT_IMPORT, "call": os.getenv("GREETING"), "keys": "GREETING" in os.environ}

async def ahandler(event, context):
    return handler(event, context)
"""


async def test_each_sandbox_sees_its_own_env_at_import_and_in_calls(
    backend: NamespaceBackend, tmp_path: Path
) -> None:
    code = write_function(tmp_path / "fn", SOURCE)
    await backend.create(SandboxSpec("a", code, "main:handler", env={"GREETING": "hello"}))
    await backend.create(SandboxSpec("b", code, "main:ahandler", env={"GREETING": "hola"}))
    await backend.create(SandboxSpec("none", code, "main:handler"))

    async def call(sandbox: str, event: object = None) -> dict[str, object]:
        response = await backend.invoke(sandbox, Request(body=json.dumps(event).encode()))
        assert response.status == 200, response.body
        result: dict[str, object] = json.loads(response.body)
        return result

    assert await call("a") == {"import": "hello", "call": "hello", "keys": True}  # on a thread
    assert await call("b") == {"import": "hola", "call": "hola", "keys": True}  # on the loop
    assert await call("none") == {"import": None, "call": None, "keys": False}
    # A write is the writer's own: neither a neighbour nor the runtime sees it.
    assert (await call("a", {"set": "changed"}))["call"] == "changed"
    assert (await call("a"))["call"] == "changed"
    assert (await call("b"))["call"] == "hola"
    assert (await call("none"))["call"] is None
    assert "GREETING" not in os.environ

"""Behaviour only the namespace backend has: shared stdlib, unloading that frees memory."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from isolation import loader
from isolation.base import Limits, SandboxSpec
from isolation.contract import Request
from isolation.errors import InvokeTimeout
from isolation.namespace import NamespaceBackend
from tests.conformance.support import HELLO, OTHER, write_function


@pytest.fixture
async def backend() -> AsyncIterator[NamespaceBackend]:
    impl = NamespaceBackend()
    yield impl
    await impl.close()


def sandbox_modules() -> list[str]:
    return [name for name in sys.modules if name.startswith(loader.PREFIX)]


def test_own_modules_are_child_first_and_the_rest_is_shared() -> None:
    finder = loader.install()
    a, b = finder.load(HELLO), finder.load(OTHER)
    try:
        main_a, main_b = a.import_module("main"), b.import_module("main")
        assert main_a.utils.VALUE == "hello"
        assert sys.modules[f"{b.package}.utils"].VALUE == "other"
        assert main_a.utils is not sys.modules[f"{b.package}.utils"]
        assert "utils" not in sys.modules  # nothing leaked into the shared namespace
        assert main_a.asyncio is sys.modules["asyncio"]  # stdlib: parent delegation
        assert main_a.Response is sys.modules["sandbox"].Response  # one contract class
        assert main_b.handler(None, None) == {"utils": "other"}
    finally:
        finder.unload(a)
        finder.unload(b)
    assert sandbox_modules() == []


def test_unload_drops_every_reference() -> None:
    finder = loader.install()
    ns = finder.load(HELLO)
    module = weakref.ref(ns.import_module("main"))
    finder.unload(ns)
    del ns
    gc.collect()
    assert module() is None
    assert not any(key.startswith(HELLO) for key in sys.path_importer_cache)


UNLOAD_PROBE = """
import asyncio, gc, json, sys, tracemalloc
from isolation.base import SandboxSpec
from isolation.contract import Request
from isolation import loader
from isolation.namespace import NamespaceBackend

HELLO = sys.argv[1]

async def main():
    backend = NamespaceBackend()

    async def load(n):
        await backend.create(SandboxSpec(f"fn-{n}", HELLO, "main:handler"))
        assert (await backend.invoke(f"fn-{n}", Request(body=b"{}"))).status == 200

    for n in range(-20, 0):  # first uses grow shared tables (sys.modules, bytecode cache) once
        await load(n)
        await backend.remove(f"fn-{n}")
    gc.collect()
    tracemalloc.start()
    empty, _ = tracemalloc.get_traced_memory()
    for n in range(10):
        await load(n)
    gc.collect()
    per_sandbox = (tracemalloc.get_traced_memory()[0] - empty) / 10
    for n in range(10):
        await backend.remove(f"fn-{n}")
    gc.collect()
    baseline, _ = tracemalloc.get_traced_memory()
    for n in range(200):
        await load(n)
        await backend.remove(f"fn-{n}")
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    left = [m for m in sys.modules if m.startswith(loader.PREFIX)]
    print(json.dumps({"per_sandbox": per_sandbox, "growth": after - baseline, "left": left}))
    await backend.close()

asyncio.run(main())
"""


def test_load_and_unload_200_times_returns_the_memory() -> None:
    # A fresh interpreter: tracemalloc sees every thread, and other tests' threads allocate.
    out = subprocess.run(
        [sys.executable, "-c", UNLOAD_PROBE, HELLO], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.splitlines()[-1])
    assert figures["left"] == []
    # Leaking each copy would retain 200 x per_sandbox; allow 2% of that for shared tables
    # (sys.modules, interned names) that grow in steps rather than per sandbox.
    assert figures["growth"] < 0.02 * 200 * figures["per_sandbox"], figures


async def test_timeout_is_reported_though_the_thread_runs_on(backend: NamespaceBackend) -> None:
    await backend.create(SandboxSpec("slow", HELLO, "main:slow", limits=Limits(timeout_s=0.2)))
    with pytest.raises(InvokeTimeout):
        await backend.invoke("slow", Request(body=json.dumps({"seconds": 0.5}).encode()))
    assert backend.usage("slow").timeouts == 1
    # Nothing can stop the thread; it holds the sandbox's only thread, so it is Unhealthy.
    status = backend.status("slow")
    assert (status.state.value, status.reason) == ("Failed", "Unhealthy")
    assert "0.2s timeout" in status.message


async def test_handler_calling_sys_exit_is_a_500_not_a_dead_runtime(
    backend: NamespaceBackend, tmp_path: Path
) -> None:
    code = tmp_path / "fn"
    code.mkdir()
    (code / "main.py").write_text("import sys\ndef handler(e, c):\n    sys.exit(2)\n")
    await backend.create(SandboxSpec("exit", str(code), "main:handler"))
    response = await backend.invoke("exit", Request())
    assert response.status == 500
    assert json.loads(response.body)["error"] == "SystemExit"


async def test_an_async_handler_that_suspends_is_cancelled_at_its_timeout(
    backend: NamespaceBackend, tmp_path: Path
) -> None:
    source = "import asyncio\nasync def handler(event, context):\n    await asyncio.sleep(30)\n"
    code_dir = write_function(tmp_path / "fn", source)
    await backend.create(SandboxSpec("s", code_dir, "main:handler", limits=Limits(timeout_s=0.2)))
    with pytest.raises(InvokeTimeout):
        await backend.invoke("s", Request())
    assert backend.usage("s").timeouts == 1

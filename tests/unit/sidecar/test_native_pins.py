"""A layer a live runtime loaded a native extension from stays cached until that runtime ends.

The scenario that broke (before NativePins): sandbox `a` imports a compiled package from its
dependency layer L1; `a` goes; L1 is unpinned and collected (the budget is 0 here, so at once;
in a pod, after the idle time or under pressure). The package stays in the runtime's
`sys.modules` with its `__path__` in L1, so sandbox `b`, whose own layer L2 ships the same
distribution, gets that module, and its lazy `import pkg.extra` read the deleted L1: a
ModuleNotFoundError in a healthy sandbox (and the runtime's ledger named a deleted root).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from nest_sidecar.code_cache import CodeCache
from nest_sidecar.cri import NativePins, RuntimePump, cached_digests, runtime_user
from sandbox.api import CreateSandbox, RuntimeInfo, SandboxEvent, SandboxInfo
from sandbox.client import RuntimeClient
from tests.dependency_layers import make_code
from tests.native_layers import compiled_extension, make_native_layer
from tests.unit.sandbox.conftest import RuntimeProcess, start_runtime, stop_runtime


def info(pid: int, roots: list[str], started_at: float = 1.0) -> RuntimeInfo:
    return RuntimeInfo(
        pid=pid, started_at=started_at, data_host="127.0.0.1", data_port=1, zygote_pid=None,
        sandboxes=0, native_roots=roots,
    )  # fmt: skip


def test_roots_name_their_cache_entries_and_nothing_outside_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    roots = [str(cache / "sha256-a"), str(cache / "sha256-b" / "site"), "/usr/lib/python3/dist",
             str(cache / ".partial-x"), str(cache)]  # fmt: skip
    assert cached_digests(roots, cache) == {"sha256-a", "sha256-b"}


class Answers:
    """A runtime whose info() answers from a list; an Exception in it is raised once."""

    def __init__(self, *answers: RuntimeInfo | Exception) -> None:
        self.answers = list(answers)

    async def info(self) -> RuntimeInfo:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def cache_with(tmp_path: Path, *digests: str) -> CodeCache:
    cache = CodeCache(tmp_path / "cache", budget_bytes=0, idle_seconds=0)
    cache.recover()
    for digest in digests:
        cache.put(digest, lambda d: (d / "f").write_text("x"))
    return cache


async def test_a_sandbox_pin_goes_only_after_the_runtime_pinned_what_it_loaded(
    tmp_path: Path,
) -> None:
    cache = cache_with(tmp_path, "sha256-l1")
    cache.use("a", "sha256-l1")
    loaded = info(7, [str(cache.path("sha256-l1"))])
    # The runtime does not answer at first: the sandbox's pin holds meanwhile.
    pins = NativePins(cache, Answers(ConnectionError("restarting"), loaded), retry=0.0)  # type: ignore[arg-type]
    pins.release("a")
    await pins.settled()
    assert cache.pins("a") == frozenset()
    assert cache.pins(runtime_user(loaded)) == {"sha256-l1"}
    assert await cache.collect() == []
    # The runtime restarted: the new one loaded nothing, the old one's pins go.
    pins.observe(info(8, [], started_at=2.0))
    assert await cache.collect() == ["sha256-l1"]


async def test_runtime_pins_survive_a_sidecar_restart_but_not_the_runtimes(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, "sha256-l1")
    loaded = info(7, [str(cache.path("sha256-l1"))])
    NativePins(cache, Answers(loaded)).observe(loaded)  # type: ignore[arg-type]
    second = CodeCache(tmp_path / "cache", budget_bytes=0, idle_seconds=0)
    second.recover()
    second.retain(set())  # no Sandbox is bound any more: sandbox pins go, the runtime's stay
    assert await second.collect() == []
    NativePins(second, Answers(loaded)).observe(info(9, [], started_at=3.0))  # type: ignore[arg-type]
    assert await second.collect() == ["sha256-l1"]


class OneRuntime:
    """Just enough of RuntimeAPI for the pump: info, an empty list, a watch that ends."""

    def __init__(self, answer: RuntimeInfo) -> None:
        self.answer = answer

    async def info(self) -> RuntimeInfo:
        return self.answer

    async def list(self) -> list[SandboxInfo]:
        return []

    def watch(self) -> AbstractAsyncContextManager[AsyncIterator[SandboxEvent]]:
        @asynccontextmanager
        async def events() -> AsyncIterator[AsyncIterator[SandboxEvent]]:
            async def none() -> AsyncIterator[SandboxEvent]:
                return
                yield

            yield none()

        return events()


async def test_the_pump_hands_every_runtime_info_it_reads_to_the_pins(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, "sha256-l1")
    answer = info(7, [str(cache.path("sha256-l1"))])
    runtime = OneRuntime(answer)
    pins = NativePins(cache, runtime)  # type: ignore[arg-type]
    pump = RuntimePump(runtime, lambda *_: None, on_info=pins.observe)  # type: ignore[arg-type]
    await pump.relist()
    assert cache.pins(runtime_user(answer)) == {"sha256-l1"}


# ---- with a real runtime daemon and a real compiled extension ---------------------------------

EAGER = """
import {pkg}

def handler(event, context):
    return {{"answer": {pkg}.ANSWER}}
"""
LAZY = """
def handler(event, context):
    import {pkg}
    from {pkg} import extra  # read from the package's directory only now
    return {{"answer": {pkg}.ANSWER, "extra": extra.WHO}}
"""


def create(sandbox_id: str, code: Path, layer: Path, pkg: str) -> CreateSandbox:
    return CreateSandbox(
        id=sandbox_id, code_dir=str(code), handler="main:handler", isolation="namespace",
        dependency_paths=[str(layer)], native_distributions=[f"{pkg}==1.0"],
    )  # fmt: skip


async def invoke(runtime: RuntimeProcess, sandbox_id: str) -> tuple[int, object]:
    path = f"/v1/sandboxes/{sandbox_id}/invoke"
    async with aiohttp.ClientSession() as http, runtime.request(http, "POST", path) as r:
        text = await r.text()
        return r.status, json.loads(text) if r.status == 200 else text


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the runtime's sandboxes can read (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="nest-test-pins-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def runtimes(tmp_path: Path) -> Iterator[Callable[[str], RuntimeProcess]]:
    started: list[RuntimeProcess] = []

    def start(name: str) -> RuntimeProcess:
        started.append(start_runtime(tmp_path, name))
        return started[-1]

    yield start
    for runtime in started:
        if runtime.proc.poll() is None:
            stop_runtime(runtime)


async def test_a_layer_a_live_runtime_loaded_a_native_from_stays_until_that_runtime_ends(
    tmp_path: Path, shared_dir: Path, runtimes: Callable[[str], RuntimeProcess]
) -> None:
    pkg = f"speedy_{uuid.uuid4().hex[:8]}"
    extension = compiled_extension(tmp_path / "build")
    cache = CodeCache(shared_dir / "cache", budget_bytes=0, idle_seconds=0)  # unpinned: gone
    cache.recover()
    l1 = cache.put("sha256-l1", lambda d: make_native_layer(d, pkg, "1.0", extension), "a")
    l2 = cache.put("sha256-l2", lambda d: make_native_layer(d, pkg, "1.0", extension), "b")
    eager = make_code(shared_dir / "eager", EAGER.format(pkg=pkg))
    lazy = make_code(shared_dir / "lazy", LAZY.format(pkg=pkg))
    first = runtimes("rt1")
    async with RuntimeClient(first.socket) as client:
        pins = NativePins(cache, client)
        await client.create(create("a", eager, l1, pkg))
        assert await invoke(first, "a") == (200, {"answer": 42})
        await client.remove("a", 0.0)
        pins.release("a")
        await pins.settled()
        await cache.collect()
        assert l1.is_dir(), "the runtime still has a package of L1 loaded"
        await client.create(create("b", lazy, l2, pkg))
        # `b` gets the runtime's module (from L1), and its lazy submodule from L1 too.
        assert await invoke(first, "b") == (200, {"answer": 42, "extra": "extra"})
        await client.remove("b", 0.0)
        pins.release("b")
        await pins.settled()
    stop_runtime(first)
    second = runtimes("rt2")
    async with RuntimeClient(second.socket) as client:
        pins.runtime = client
        pins.observe(await client.info())  # what the pump does on its relist after a restart
    assert cache.users() == []
    assert sorted(await cache.collect()) == ["sha256-l1", "sha256-l2"]

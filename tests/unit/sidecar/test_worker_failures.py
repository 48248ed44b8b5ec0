"""A worker ends every failure of validation or fetch with a reason and a message, and lives on.

Before: an OSError out of the fetcher killed the worker (the sandbox stayed Pending), a
validation error's message was its first line ("1 validation error for Sandbox"), and a
deletion waited for a hung download to time out.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import hashlib
import io
import json
import zipfile
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from crds.sandbox import CodeSource, SandboxPhase
from nest_sidecar.code_cache import CodeCache
from nest_sidecar.fetcher import CodeFetcher, CodeRef, FetchTimeouts
from nest_sidecar.status import Observed
from nest_sidecar.worker import Backoff, PodIdentity, SandboxWorker
from sandbox.api import CreateSandbox, RuntimeInfo, SandboxEvent, SandboxInfo
from sandbox.errors import RuntimeAPIError, RuntimeUnavailable

HANDLER = "def handler(e, c):\n    return 1\n"


def sandbox(source: Mapping[str, Any], **function: Any) -> dict[str, Any]:
    return {
        "metadata": {"uid": "u1", "name": "s1", "namespace": "ns", "generation": 1,
                     "finalizers": ["nest.sandbox.dev/sidecar"]},
        "spec": {"podName": "pool-0", "restartPolicy": "Always", "function": {
            "handler": "main:handler", "source": dict(source), **function}},
    }  # fmt: skip


class Runtime:
    """Starts whatever it is given."""

    def __init__(self) -> None:
        self.created: list[CreateSandbox] = []

    async def info(self) -> RuntimeInfo:
        raise NotImplementedError

    async def create(self, request: CreateSandbox) -> SandboxInfo:
        self.created.append(request)
        return SandboxInfo(
            id=request.id, isolation="subprocess", state="Running", reason="", message="",
            pid=1, exit_code=None, signal=None, created_at=0.0,
            started_at=0.0, finished_at=None,
        )  # fmt: skip

    async def remove(self, sandbox_id: str, grace_seconds: float) -> None:
        return None

    async def list(self) -> list[SandboxInfo]:
        return []

    def watch(self) -> AbstractAsyncContextManager[AsyncIterator[SandboxEvent]]:
        raise NotImplementedError


class Kube:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.released = asyncio.Event()

    async def release_finalizer(self, obj: Mapping[str, Any]) -> None:
        self.released.set()

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


class Harness:
    def __init__(self, obj: Mapping[str, Any], fetcher: CodeFetcher) -> None:
        self.reports: list[Observed] = []
        self.kube = Kube()
        self.runtime = Runtime()
        self.worker = SandboxWorker(
            obj,
            runtime=self.runtime,
            fetcher=fetcher,
            kube=self.kube,
            report=lambda _, observed: self.reports.append(observed),
            pod=PodIdentity("pool-0", "127.0.0.9", 8080),
            backoff=Backoff(initial=30.0),  # a retry is not waited for here
        )
        self.task = asyncio.create_task(self.worker.run())

    async def until(self, check: Callable[[Observed], bool]) -> Observed:
        async with asyncio.timeout(10):
            while not any(check(r) for r in self.reports):
                assert not self.task.done(), self.task  # the worker died
                await asyncio.sleep(0.01)  # polling the worker's reports, with a deadline
        return next(r for r in self.reports if check(r))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _none(namespace: str, name: str) -> None:
    return None


class RaisingFetcher(CodeFetcher):
    """A fetcher whose fetch raises what the test says, as a fetcher bug would."""

    def __init__(self, exc: Exception, http: aiohttp.ClientSession, root: Path) -> None:
        super().__init__(CodeCache(root), _none, http)
        self.exc = exc

    async def fetch(self, source: CodeSource, namespace: str, user: str | None = None) -> CodeRef:
        raise self.exc


async def test_an_untyped_error_from_the_fetcher_fails_the_start_with_its_name(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    denied = PermissionError(errno.EACCES, "Permission denied", "/var/lib/nest/code/x")
    h = Harness(sandbox({"inline": {"main.py": HANDLER}}), RaisingFetcher(denied, http, tmp_path))
    try:
        seen = await h.until(lambda r: r.reason == "CodeFetchFailed")
        assert seen.phase == SandboxPhase.STARTING  # retried after the back-off
        assert "PermissionError: [Errno 13] Permission denied" in (seen.message or "")
        assert seen.code_ready is False and "Permission denied" in (seen.code_message or "")
        assert ("Warning", "CodeFetchFailed") in [e[:2] for e in h.kube.events]
        assert not h.task.done()
    finally:
        h.task.cancel()


@pytest.mark.parametrize(
    ("function", "names"),
    [
        ({"env": {"1BAD-NAME": "x"}}, ["spec.function.env", "1BAD-NAME", "C identifier"]),
        (
            {"source": {"inline": {"a": "", "a/b.py": HANDLER}}},
            ["spec.function.source.inline", "'a/b.py'", "inside 'a'"],
        ),
        (
            {"source": {"inline": {"a" * 300 + ".py": HANDLER}}},
            ["spec.function.source.inline", "longer than 255 bytes"],
        ),
    ],
)
async def test_an_invalid_spec_fails_for_good_naming_the_field_and_the_problem(
    http: aiohttp.ClientSession, tmp_path: Path, function: dict[str, Any], names: list[str]
) -> None:
    obj = sandbox({"inline": {"main.py": HANDLER}})
    obj["spec"]["function"].update(copy.deepcopy(function))
    h = Harness(obj, CodeFetcher(CodeCache(tmp_path), _none, http))
    try:
        seen = await h.until(lambda r: r.phase == SandboxPhase.FAILED)
        assert seen.reason == "InvalidSpec"
        for name in names:
            assert name in (seen.message or ""), seen.message
        assert "validation error" not in (seen.message or "")
        assert h.runtime.created == []
    finally:
        h.task.cancel()


async def test_an_archive_that_cannot_be_laid_out_fails_naming_the_file(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a", "")
        zf.writestr("a/b.py", HANDLER)
    blob = buf.getvalue()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=blob)

    app = web.Application()
    app.router.add_get("/code.zip", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/code.zip"
    source = {"url": url, "sha256": hashlib.sha256(blob).hexdigest()}
    h = Harness(sandbox(source), CodeFetcher(CodeCache(tmp_path), _none, http))
    try:
        seen = await h.until(lambda r: r.phase == SandboxPhase.FAILED)
        assert seen.reason == "InvalidCodeArchive"
        assert "'a/b.py' is inside 'a'" in (seen.message or "")
    finally:
        h.task.cancel()
        await runner.cleanup()


async def test_a_deletion_does_not_wait_for_a_hung_download(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    asked = asyncio.Event()
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        asked.set()
        await release.wait()
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/code.zip", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/code.zip"
    obj = sandbox({"url": url, "sha256": "0" * 64})
    patient = FetchTimeouts(connect=600, read=600, total=600)
    h = Harness(obj, CodeFetcher(CodeCache(tmp_path), _none, http, patient))
    try:
        async with asyncio.timeout(10):
            await asked.wait()
        deleted = copy.deepcopy(obj)
        deleted["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
        h.worker.update(deleted)
        async with asyncio.timeout(10):
            await h.task
        assert h.kube.released.is_set()
        assert h.reports[-1].phase == SandboxPhase.TERMINATING
    finally:
        h.task.cancel()
        release.set()
        await runner.cleanup()


async def test_the_fetched_code_is_pinned_for_the_sandbox(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    cache = CodeCache(tmp_path)
    h = Harness(sandbox({"inline": {"main.py": HANDLER}}), CodeFetcher(cache, _none, http))
    try:
        await h.until(lambda r: r.phase == SandboxPhase.RUNNING)
        (digest,) = cache.in_use()
        assert h.runtime.created[0].code_dir == str(tmp_path / digest)
        assert await cache.collect() == []
    finally:
        h.task.cancel()


class RefusingRuntime(Runtime):
    """Answers create with an error the runtime did not type."""

    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    async def create(self, request: CreateSandbox) -> SandboxInfo:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (RuntimeAPIError(500, "Error", "Server got itself in trouble"), "500 Error: Server got"),
        (json.JSONDecodeError("Expecting value", "500 Internal", 0), "JSONDecodeError: Expecting"),
    ],
)
async def test_an_untyped_runtime_error_at_create_is_named_and_retried(
    http: aiohttp.ClientSession, tmp_path: Path, exc: Exception, text: str
) -> None:
    h = Harness(
        sandbox({"inline": {"main.py": HANDLER}}), CodeFetcher(CodeCache(tmp_path), _none, http)
    )
    h.worker.runtime = RefusingRuntime(exc)
    try:
        seen = await h.until(lambda r: r.reason == "CreateFailed")
        assert seen.phase == SandboxPhase.STARTING
        assert text in (seen.message or ""), seen.message
        assert not h.task.done()
    finally:
        h.task.cancel()


async def test_a_runtime_that_goes_away_during_create_is_retried_not_fatal(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # A namespace-mode import that crashes the runtime ends the create call with no answer.
    h = Harness(
        sandbox({"inline": {"main.py": HANDLER}}), CodeFetcher(CodeCache(tmp_path), _none, http)
    )
    h.worker.runtime = RefusingRuntime(RuntimeUnavailable("Server disconnected"))
    try:
        seen = await h.until(lambda r: r.reason == "RuntimeUnavailable")
        assert seen.phase == SandboxPhase.STARTING  # a back-off, then another try
        assert "Server disconnected" in (seen.message or ""), seen.message
        assert ("Warning", "RuntimeUnavailable") in [e[:2] for e in h.kube.events]
        assert not h.task.done()
    finally:
        h.task.cancel()

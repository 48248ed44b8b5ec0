"""The namespace backend: sandboxes as import namespaces inside the runtime's own interpreter.

Why: it is the density end of the trade-off. A sandbox costs one synthetic package and the
function's own modules — no process, no interpreter — so a pod can host thousands and hot-plug
one in well under a millisecond. The price is a weak trust boundary (shared process, env, cwd,
threads and third-party module state; see docs/isolation.md): namespace mode is for trusted code.
Sync handlers run on a thread pool so they never block the event loop; timeouts are best-effort
because a thread cannot be killed (the caller gets its 504, the thread runs to completion).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from isolation import loader
from isolation.base import (
    TERMINAL,
    Admission,
    SandboxSpec,
    SandboxState,
    SandboxStatus,
    StatusCell,
    StatusListener,
    Usage,
)
from isolation.contract import FunctionInfo, Request, Response, new_request_id
from isolation.errors import InvokeTimeout, NotRunning, SandboxExists, SandboxNotFound
from isolation.host import (
    FunctionHost,
    Suspended,
    classify_load_error,
    load_layers,
    parse_handler,
    start_eagerly,
)


def _ignore(status: SandboxStatus) -> None:
    pass


def function_info(spec: SandboxSpec) -> FunctionInfo:
    return FunctionInfo(
        sandbox_id=spec.id,
        function_name=spec.function_name or spec.id,
        function_version=spec.function_version,
        memory_limit_in_mb=spec.limits.memory_mb or 128,
        timeout_s=spec.limits.timeout_s,
    )


class _Sandbox:
    def __init__(self, spec: SandboxSpec, cell: StatusCell) -> None:
        self.spec = spec
        self.cell = cell
        self.admission = Admission(spec.limits.concurrency, spec.limits.queue)
        self.idle = asyncio.Event()
        self.idle.set()
        self.done = asyncio.Event()
        self.host: FunctionHost | None = None
        self.ns: loader.Namespace | None = None
        self.invocations = 0
        self.errors = 0
        self.timeouts = 0


class NamespaceBackend:
    name = "namespace"

    def __init__(self, on_change: StatusListener = _ignore, threads: int = 64) -> None:
        self._on_change = on_change
        self._sandboxes: dict[str, _Sandbox] = {}
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nest-ns")
        self._finder = loader.install()

    async def _run_sync(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _get(self, sandbox_id: str) -> _Sandbox:
        try:
            return self._sandboxes[sandbox_id]
        except KeyError:
            raise SandboxNotFound(sandbox_id) from None

    async def create(self, spec: SandboxSpec) -> SandboxStatus:
        if spec.id in self._sandboxes:
            raise SandboxExists(spec.id)
        sb = _Sandbox(spec, StatusCell(spec, self.name, self._on_change))
        self._sandboxes[spec.id] = sb
        try:
            module_name, attr = parse_handler(spec.handler)
            sb.ns = self._finder.load(spec.code_dir)
            module = sb.ns.import_module(module_name)
            host = FunctionHost(
                function_info(spec), module, attr, load_layers(spec.layers), self._run_sync
            )
            await host.start()
        except (Exception, SystemExit) as exc:  # broken function code must not end the runtime
            err = classify_load_error(exc, spec.handler)
            self._unload(sb)
            sb.cell.move(SandboxState.FAILED, reason=err.reason, message=err.message)
            sb.done.set()
            raise err from None
        sb.host = host
        return sb.cell.move(SandboxState.RUNNING, pid=os.getpid())

    async def invoke(self, sandbox_id: str, request: Request) -> Response:
        sb = self._get(sandbox_id)
        if sb.cell.current.state is not SandboxState.RUNNING:
            raise NotRunning(f"{sandbox_id} is {sb.cell.current.state}")
        async with sb.admission:
            host = sb.host
            if host is None or sb.cell.current.state is not SandboxState.RUNNING:
                raise NotRunning(f"{sandbox_id} is {sb.cell.current.state}")
            sb.idle.clear()
            sb.invocations += 1
            timeout = sb.spec.limits.timeout_s
            deadline = time.monotonic() + timeout  # the loop's clock: asyncio.timeout_at below
            try:
                started = start_eagerly(host.invoke(request, new_request_id(), deadline))
                if isinstance(started, Suspended):
                    async with asyncio.timeout_at(deadline):
                        response = await started.rest
                else:
                    response = started
            except TimeoutError:
                sb.timeouts += 1
                raise InvokeTimeout(f"{sandbox_id} did not answer within {timeout:g}s") from None
            finally:
                if sb.admission.in_flight == 1:
                    sb.idle.set()
            if response.status >= 500:
                sb.errors += 1
            return response

    async def stop(self, sandbox_id: str, grace_s: float = 5.0) -> SandboxStatus:
        sb = self._get(sandbox_id)
        state = sb.cell.current.state
        if state in TERMINAL:
            return sb.cell.current
        if state is SandboxState.STOPPING:
            await sb.done.wait()
            return sb.cell.current
        sb.cell.move(SandboxState.STOPPING)
        deadline = time.monotonic() + grace_s
        try:
            async with asyncio.timeout(grace_s):
                await sb.idle.wait()
        except TimeoutError:
            pass  # in-flight invocations overran the grace period; unload anyway
        if sb.host is not None:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await sb.host.close()
            except TimeoutError:
                pass
        self._unload(sb)
        sb.done.set()
        return sb.cell.move(SandboxState.STOPPED, reason="Completed")

    def _unload(self, sb: _Sandbox) -> None:
        sb.host = None
        if sb.ns is not None:
            self._finder.unload(sb.ns)
            sb.ns = None

    async def remove(self, sandbox_id: str) -> None:
        if sandbox_id not in self._sandboxes:
            return  # idempotent, like stop
        await self.stop(sandbox_id, grace_s=0.0)
        self._sandboxes.pop(sandbox_id, None)

    def status(self, sandbox_id: str) -> SandboxStatus:
        return self._get(sandbox_id).cell.current

    def usage(self, sandbox_id: str) -> Usage:
        sb = self._get(sandbox_id)
        return Usage(
            in_flight=sb.admission.in_flight,
            queued=sb.admission.queued,
            invocations=sb.invocations,
            errors=sb.errors,
            timeouts=sb.timeouts,
            rejected=sb.admission.rejected,
        )

    def list(self) -> list[SandboxStatus]:
        return [sb.cell.current for sb in self._sandboxes.values()]

    async def close(self) -> None:
        for sandbox_id in list(self._sandboxes):
            await self.remove(sandbox_id)
        self._executor.shutdown(wait=False, cancel_futures=True)

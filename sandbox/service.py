"""The runtime's core: which backend holds which sandbox, state-change fan-out, invoke metering.

Why separate from the HTTP layer: the daemon's decisions (route to a backend, account an
invocation, publish an event, refuse a duplicate) are ordinary async methods that tests and
benchmarks can drive without sockets; `sandbox.runtime` only translates HTTP to these calls.
Namespace sandboxes live in this process; subprocess sandboxes are supervised children (through
the zygote). Nothing is persisted but the namespace backend's crash record
(isolation.crashlog): a restarted runtime runs nothing, and says who crashed the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from isolation.base import Backend, SandboxStatus, Usage
from isolation.boundary import BoundaryConfig
from isolation.contract import Request, Response
from isolation.errors import SandboxExists
from isolation.errors import SandboxNotFound as IsoNotFound
from isolation.host import load_layers, run_runtime_start
from isolation.namespace import NamespaceBackend
from isolation.process import SubprocessBackend
from sandbox.api import CreateSandbox, SandboxEvent, SandboxInfo, to_info, to_spec
from sandbox.metrics import Metrics

EVENT_BACKLOG = 4096


class EventBroker:
    """Fans state changes out to every watcher; a watcher that falls behind is cut off."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[SandboxEvent | None]] = set()

    def publish(self, event: SandboxEvent) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # The watcher must relist; silently skipping events would be worse.
                self._queues.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[SandboxEvent | None]]:
        queue: asyncio.Queue[SandboxEvent | None] = asyncio.Queue(EVENT_BACKLOG)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    def close(self) -> None:
        for queue in self._queues:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)


class Runtime:
    def __init__(
        self,
        preload: Sequence[str] = (),
        layers: Sequence[str] = (),
        memory_poll_s: float = 0.2,
        boundary: BoundaryConfig | None = None,
        state_dir: str | None = None,  # the namespace backend's crash record; None: none
    ) -> None:
        self.started_at = time.time()
        self.pid = os.getpid()
        self.layers = tuple(layers)
        self.events = EventBroker()
        self.metrics = Metrics(self._usages)
        self.namespace = NamespaceBackend(on_change=self._changed, state_dir=state_dir)
        self.subprocess = SubprocessBackend(
            on_change=self._changed,
            preload=preload,
            memory_poll_s=memory_poll_s,
            boundary=boundary,
        )
        self._where: dict[str, Backend] = {}

    def _changed(self, status: SandboxStatus) -> None:
        self.events.publish(SandboxEvent(sandbox=self._info(status)))

    def _info(self, status: SandboxStatus, usage: Usage | None = None) -> SandboxInfo:
        """The status as the control API shows it, with the boundary around the sandbox."""
        info = to_info(status, usage)
        if status.isolation != self.subprocess.name:
            return info
        principals = self.subprocess.principals
        if principals is None:
            return info.model_copy(update={"confined": False, "confinement": "unconfined runtime"})
        confined, summary = principals.summary(status.id)
        return info.model_copy(update={"confined": confined, "confinement": summary})

    async def start(self) -> None:
        await run_runtime_start(load_layers(self.layers))
        await self.subprocess.start()

    def _backend(self, sandbox_id: str) -> Backend:
        try:
            return self._where[sandbox_id]
        except KeyError:
            raise IsoNotFound(sandbox_id) from None

    async def create(self, request: CreateSandbox) -> SandboxInfo:
        """Raises LoadError (the sandbox stays listed as Failed) or SandboxExists."""
        if request.id in self._where:
            raise SandboxExists(request.id)
        backend: Backend = self.namespace if request.isolation == "namespace" else self.subprocess
        self._where[request.id] = backend
        started = time.perf_counter()
        try:
            status = await backend.create(to_spec(request, self.layers))
        except SandboxExists:
            del self._where[request.id]
            raise
        self.metrics.cold_start.labels(request.isolation).observe(time.perf_counter() - started)
        return self._info(status)

    async def invoke(self, sandbox_id: str, request: Request) -> Response:
        """Counts live in the backends (read at scrape time); only latency is recorded here."""
        backend = self._backend(sandbox_id)
        started = time.perf_counter()
        response = await backend.invoke(sandbox_id, request)
        self.metrics.observe(sandbox_id, time.perf_counter() - started)
        return response

    def get(self, sandbox_id: str) -> SandboxInfo:
        backend = self._backend(sandbox_id)
        return self._info(backend.status(sandbox_id), backend.usage(sandbox_id))

    def list(self) -> list[SandboxInfo]:
        return [self.get(sandbox_id) for sandbox_id in list(self._where)]

    async def stop(self, sandbox_id: str, grace_s: float) -> SandboxInfo:
        backend = self._backend(sandbox_id)
        await backend.stop(sandbox_id, grace_s)
        return self.get(sandbox_id)

    async def remove(self, sandbox_id: str, grace_s: float) -> None:
        backend = self._backend(sandbox_id)
        await backend.stop(sandbox_id, grace_s)
        await backend.remove(sandbox_id)
        self._where.pop(sandbox_id, None)
        self.metrics.forget(sandbox_id)

    def _usages(self) -> Iterator[tuple[str, Usage]]:
        for sandbox_id, backend in list(self._where.items()):
            with contextlib.suppress(IsoNotFound):
                yield sandbox_id, backend.usage(sandbox_id)

    def info(self) -> dict[str, Any]:
        principals = self.subprocess.principals
        return {
            "pid": self.pid,
            "started_at": self.started_at,
            "zygote_pid": self.subprocess.zygote_pid,
            "sandboxes": len(self._where),
            "boundary": principals.describe() if principals else None,
            "boundary_reduced": principals.reduced
            if principals
            else ["subprocess sandboxes are not confined"],
            "last_crash": crash.as_report() if (crash := self.namespace.last_crash) else None,
            "threads": self.namespace.threads(),
            "native_distributions": self.namespace.loaded_natives(),
            "native_roots": self.namespace.native_roots(),
        }

    async def close(self) -> None:
        self.events.close()
        await self.namespace.close()
        await self.subprocess.close()
        self._where.clear()

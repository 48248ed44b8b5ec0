"""The sidecar's view of its pod's runtime daemon: the CRI seam, and the pump of runtime events.

Workers need three things from the runtime (create, remove, list) and to hear when a sandbox
changes state or disappears. The pump follows the runtime's event stream and, whenever the stream
breaks, relists: a sandbox that vanished from the list (the runtime restarted and runs nothing)
is reported as gone, so its worker re-creates it and counts the restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from sandbox.api import CreateSandbox, RuntimeInfo, SandboxEvent, SandboxInfo

log = logging.getLogger(__name__)


class RuntimeAPI(Protocol):
    """What the sidecar uses of the runtime's control API (`sandbox.client.RuntimeClient`)."""

    async def info(self) -> RuntimeInfo: ...

    async def create(self, request: CreateSandbox) -> SandboxInfo: ...

    async def remove(self, sandbox_id: str, grace_seconds: float) -> None: ...

    async def list(self) -> list[SandboxInfo]: ...

    def watch(self) -> AbstractAsyncContextManager[AsyncIterator[SandboxEvent]]: ...


# sandbox id -> its latest info, or None when the runtime no longer has it
Listener = Callable[[str, SandboxInfo | None], None]


class RuntimePump:
    """Feeds runtime state changes to `listener`; `ready` holds while the runtime answers."""

    def __init__(self, runtime: RuntimeAPI, listener: Listener, retry: float = 0.2) -> None:
        self.runtime = runtime
        self.listener = listener
        self.retry = retry
        self.ready = asyncio.Event()
        self.info: RuntimeInfo | None = None
        self.known: dict[str, SandboxInfo] = {}
        self.restarts = 0

    async def relist(self) -> None:
        info = await self.runtime.info()
        if self.info is not None and (info.pid, info.started_at) != (
            self.info.pid,
            self.info.started_at,
        ):
            self.restarts += 1
            log.warning("runtime restarted (pid %s -> %s)", self.info.pid, info.pid)
        self.info = info
        current = {s.id: s for s in await self.runtime.list()}
        for sandbox_id in set(self.known) - set(current):
            self.listener(sandbox_id, None)
        for sandbox_id, sandbox in current.items():
            if self.known.get(sandbox_id) != sandbox:
                self.listener(sandbox_id, sandbox)
        self.known = current
        self.ready.set()

    async def run(self) -> None:
        while True:
            try:
                # Subscribe before listing, so no change between the two is missed.
                async with self.runtime.watch() as events:
                    await self.relist()
                    async for event in events:
                        self.known[event.sandbox.id] = event.sandbox
                        self.listener(event.sandbox.id, event.sandbox)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the runtime is restarting or gone: relist when it's back
                if self.ready.is_set():
                    log.warning("runtime event stream broken: %s", exc)
                self.ready.clear()
            await asyncio.sleep(self.retry)

    def forget(self, sandbox_id: str) -> None:
        self.known.pop(sandbox_id, None)

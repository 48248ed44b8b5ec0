"""The sidecar's view of its pod's runtime daemon: the CRI seam, and the pump of runtime events.

Workers need three things from the runtime (create, remove, list) and to hear when a sandbox
changes state or disappears. The pump follows the runtime's event stream and, whenever the stream
breaks, relists: a sandbox that vanished from the list (the runtime restarted and runs nothing)
is reported to its worker, which re-creates it and counts the restart.

When the runtime did not exit cleanly, the new one says who was running code at the time
(`RuntimeInfo.last_crash`, isolation.crashlog): a vanished sandbox the runtime named as the
culprit is reported Failed with reason `RuntimeCrash` (final: it would crash the next shared
runtime too), every other one Failed with reason `RuntimeRestarted` and a message naming the
culprit (or the suspects), so its worker restarts it and the Event says why (`crash_notice`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from sandbox.api import CreateSandbox, LastCrash, RuntimeInfo, SandboxEvent, SandboxInfo

log = logging.getLogger(__name__)

RUNTIME_CRASH = "RuntimeCrash"  # crds.sandbox.RUNTIME_CRASH_REASON: final, never restarted here
RUNTIME_RESTARTED = "RuntimeRestarted"


class RuntimeAPI(Protocol):
    """What the sidecar uses of the runtime's control API (`sandbox.client.RuntimeClient`)."""

    async def info(self) -> RuntimeInfo: ...

    async def create(self, request: CreateSandbox) -> SandboxInfo: ...

    async def remove(self, sandbox_id: str, grace_seconds: float) -> None: ...

    async def list(self) -> list[SandboxInfo]: ...

    def watch(self) -> AbstractAsyncContextManager[AsyncIterator[SandboxEvent]]: ...


# sandbox id -> its latest info, or None when the runtime no longer has it
Listener = Callable[[str, SandboxInfo | None], None]
# sandbox id -> how people know it ("namespace/name")
Namer = Callable[[str], str]


def _names(ids: list[str], name_of: Namer) -> str:
    named = [name_of(i) for i in ids[:5]]
    more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
    return ", ".join(named) + more


def crash_notice(crash: LastCrash, sandbox_id: str, name_of: Namer) -> tuple[str, str]:
    """(reason, message) for a sandbox that vanished in the runtime crash `crash`.

    The rule is the runtime's (isolation.crashlog.judge): a culprit is a sandbox that alone was
    running code when the runtime died (or alone at this crash and the ones just before);
    when several were, none is blamed until a repeat singles one out.
    """
    how = f"the pod's runtime crashed ({crash.exit_status})"
    if sandbox_id in crash.culprits:
        doing = "importing" if sandbox_id in crash.importing else "running a call"
        return RUNTIME_CRASH, (
            f"{how} while this namespace sandbox was {doing} ({crash.rule}); a shared runtime "
            "cannot contain that, so it is not started in one again (isolation: subprocess "
            "can run it)"
        )
    if crash.culprits:
        return RUNTIME_RESTARTED, (
            f"{how} while running sandbox {_names(crash.culprits, name_of)}; restarted"
        )
    if crash.sandboxes:
        return RUNTIME_RESTARTED, (
            f"{how} while sandboxes {_names(crash.sandboxes, name_of)} were running code; no "
            "single culprit yet (a repeat with one of them running names it); restarted"
        )
    return RUNTIME_RESTARTED, f"{how} while no sandbox was running code; restarted"


def _by_id(sandbox_id: str) -> str:
    return sandbox_id


class RuntimePump:
    """Feeds runtime state changes to `listener`; `ready` holds while the runtime answers."""

    def __init__(
        self,
        runtime: RuntimeAPI,
        listener: Listener,
        retry: float = 0.2,
        name_of: Namer = _by_id,
    ) -> None:
        self.runtime = runtime
        self.listener = listener
        self.retry = retry
        self.name_of = name_of
        self.ready = asyncio.Event()
        self.info: RuntimeInfo | None = None
        self.known: dict[str, SandboxInfo] = {}
        self.restarts = 0

    async def relist(self) -> None:
        info = await self.runtime.info()
        restarted = self.info is not None and (info.pid, info.started_at) != (
            self.info.pid,
            self.info.started_at,
        )
        if restarted:
            assert self.info is not None
            self.restarts += 1
            log.warning("runtime restarted (pid %s -> %s)", self.info.pid, info.pid)
        self.info = info
        current = {s.id: s for s in await self.runtime.list()}
        crash = info.last_crash if restarted else None
        for sandbox_id in set(self.known) - set(current):
            self.listener(sandbox_id, self._vanished(sandbox_id, crash))
        for sandbox_id, sandbox in current.items():
            if self.known.get(sandbox_id) != sandbox:
                self.listener(sandbox_id, sandbox)
        self.known = current
        self.ready.set()

    def _vanished(self, sandbox_id: str, crash: LastCrash | None) -> SandboxInfo | None:
        """What to tell the worker of a sandbox the runtime no longer has: None (it is simply
        gone), or, after a crash, a Failed report saying who crashed the runtime."""
        last = self.known.get(sandbox_id)
        if crash is None or last is None:
            return None
        reason, message = crash_notice(crash, sandbox_id, self.name_of)
        return last.model_copy(update={"state": "Failed", "reason": reason, "message": message})

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

"""The sidecar's client of its pod's runtime daemon: the CRI seam, and the pump of runtime events.

Named for what it is to the sidecar, as the kubelet names its side of the runtime boundary (CRI,
and PLEG for the event pump): the daemon itself is `sandbox/runtime.py`, this is how the sidecar
talks to it and hears from it.

Workers need three things from the runtime (create, remove, list) and to hear when a sandbox
changes state or disappears. The pump follows the runtime's event stream and, whenever the stream
breaks, relists: a sandbox that vanished from the list (the runtime restarted and runs nothing)
is reported to its worker, which re-creates it and counts the restart.

When the runtime did not exit cleanly, the new one says who was running code at the time
(`RuntimeInfo.last_crash`, isolation.crashlog): a vanished sandbox the runtime named as the
culprit is reported Failed with reason `RuntimeCrash` (final: it would crash the next shared
runtime too), every other one Failed with reason `RuntimeRestarted` and a message naming the
culprit (or the suspects), so its worker restarts it and the Event says why (`crash_notice`).

The runtime also says which dependency layers its interpreter loaded native extensions from
(`RuntimeInfo.native_roots`). Those stay pinned in the code cache while that runtime lives
(`NativePins`), whoever still uses them: a compiled extension loads once per process, so its
package stays in `sys.modules` with its `__path__` in that layer after its last sandbox is gone,
and the next sandbox needing the distribution gets that module, whose lazy submodules, data
files and pure-Python dependencies are read from that directory. Evicted, they were gone (a
`ModuleNotFoundError` in a healthy sandbox), or re-unpacked by a later pull while the runtime's
ledger still named the old path. A sandbox's own pins are dropped only once the runtime's are
fresh, so nothing is collected in between; a restarted runtime's pins go with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

from nest_sidecar.code_cache import RUNTIME_PREFIX, CodeCache
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


def runtime_user(info: RuntimeInfo) -> str:
    """The cache user a runtime pins as: one per process lifetime (pids are reused)."""
    return f"{RUNTIME_PREFIX}{info.pid}-{info.started_at!r}"


def cached_digests(roots: Iterable[str], cache_root: Path) -> frozenset[str]:
    """The cache entries (digests) that hold these import roots; a root outside the cache (code
    baked into the image) is nobody's to collect."""
    base = os.path.normpath(os.path.abspath(cache_root))
    found = set()
    for root in roots:
        relative = os.path.relpath(os.path.normpath(os.path.abspath(root)), base)
        first = relative.split(os.sep, 1)[0]
        if first not in ("", ".", "..") and not first.startswith("."):
            found.add(first)
    return frozenset(found)


class NativePins:
    """The layers the live runtime loaded native extensions from, pinned in the code cache.

    `observe` is fed every RuntimeInfo the sidecar gets (the pump's relists, the Lease's
    renewals): it pins what this runtime reports and releases the pins of any other runtime (a
    restarted one; one a previous sidecar saw). `release(sandbox)` replaces the cache's own
    `release`: the sandbox's pins go only after a RuntimeInfo asked for afterwards is observed,
    so a layer is never unpinned between its last sandbox leaving and the runtime's pin."""

    def __init__(self, cache: CodeCache, runtime: RuntimeAPI, retry: float = 0.5) -> None:
        self.cache = cache
        self.runtime = runtime
        self.retry = retry
        self.user: str | None = None  # the live runtime's cache user, once one was observed
        self._releasing: set[asyncio.Task[None]] = set()

    def observe(self, info: RuntimeInfo) -> None:
        user = runtime_user(info)
        digests = cached_digests(info.native_roots, self.cache.root)
        if digests:
            self.cache.use(user, *digests)
        else:
            self.cache.release(user)
        for other in self.cache.users():
            if other.startswith(RUNTIME_PREFIX) and other != user:
                log.info("runtime %s is gone: its native layers may be collected", other)
                self.cache.release(other)
        self.user = user

    def release(self, sandbox_uid: str) -> None:
        """`sandbox_uid` is gone (removed from the runtime): drop its pins once the runtime's
        are fresh. Retried while the runtime does not answer (its pins stay until then)."""
        task = asyncio.get_running_loop().create_task(self._release(sandbox_uid))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, sandbox_uid: str) -> None:
        while True:
            try:
                info = await self.runtime.info()
            except Exception as exc:  # restarting: its successor's first answer will do
                log.debug("runtime unknown while releasing %s: %s", sandbox_uid, exc)
                await asyncio.sleep(self.retry)
                continue
            self.observe(info)
            self.cache.release(sandbox_uid)
            return

    async def settled(self) -> None:
        """Wait for the releases asked for so far (tests, shutdown)."""
        while self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)


class RuntimePump:
    """Feeds runtime state changes to `listener`; `ready` holds while the runtime answers.
    `on_info` hears every RuntimeInfo it reads (NativePins.observe)."""

    def __init__(
        self,
        runtime: RuntimeAPI,
        listener: Listener,
        retry: float = 0.2,
        name_of: Namer = _by_id,
        on_info: Callable[[RuntimeInfo], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.listener = listener
        self.retry = retry
        self.name_of = name_of
        self.on_info = on_info
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
        if self.on_info is not None:
            self.on_info(info)
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

"""The sidecar's client of its pod's runtime daemon: the CRI seam, and the pump of runtime events.

Named for what it is to the sidecar, as the kubelet names its side of the runtime boundary (CRI,
and PLEG for the event pump): the daemon itself is `sandbox/runtime.py`, this is how the sidecar
talks to it and hears from it.

Workers need three things from the runtime (create, remove, list) and to hear when a sandbox
changes state or disappears. The pump follows the runtime's event stream and, whenever the stream
breaks, relists: a sandbox that vanished from the list (the runtime restarted and runs nothing)
is reported to its worker, which re-creates it and counts the restart.

While the runtime does not answer, nobody knows whether its sandboxes still serve, so, as the
kubelet's PLEG marks a pod NotReady when its container runtime is down, the pump declares the
runtime lost (`on_outage(message)`) once it has not answered for `lost_after` (0.5 s) since the
stream broke: every worker then reports its Running sandbox Ready=False with reason
`RuntimeUnavailable` (phase Running, no restart counted), and the endpoints controller lists it
not ready, so the gateway stops sending calls to a dead address. When the runtime answers again
the pump relists first (a vanished sandbox is reported gone, as above, and restarted) and then
says so (`on_outage(None)`): a sandbox the runtime still runs (it never restarted: a dropped or
stalled stream) is Ready again. A stream the runtime merely cut off reconnects within one
`retry` (0.2 s), under `lost_after`, so it flaps nothing. Only a broken stream starts the clock:
a runtime that hangs with its stream open is not noticed (a probe would flap under load).

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
# The Ready condition's reason while the runtime does not answer (the sandbox may still run).
RUNTIME_UNAVAILABLE = "RuntimeUnavailable"
# Seconds the runtime may not answer before its sandboxes are reported not ready. A clock, not
# "one failed reconnect": a hung runtime (stopped, overloaded) never refuses a connection, it
# just does not answer, and only a deadline catches that. Half a second is two reconnect tries
# (`retry`), enough for a stream the runtime cut off, and little of a killed runtime's outage
# (it takes 5-18 s to come back), so calls stop going to a dead address within about a second.
LOST_AFTER = 0.5


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
# why the runtime is declared lost (a message for the Ready condition), or None: it answers again
Outage = Callable[[str | None], None]


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
    `on_info` hears every RuntimeInfo it reads (NativePins.observe); `on_outage` hears when the
    runtime is declared lost (a message) and when it answers again (None), once each."""

    def __init__(
        self,
        runtime: RuntimeAPI,
        listener: Listener,
        retry: float = 0.2,
        name_of: Namer = _by_id,
        on_info: Callable[[RuntimeInfo], None] | None = None,
        on_outage: Outage | None = None,
        lost_after: float = LOST_AFTER,
    ) -> None:
        self.runtime = runtime
        self.listener = listener
        self.retry = retry
        self.name_of = name_of
        self.on_info = on_info
        self.on_outage = on_outage
        self.lost_after = lost_after
        self.ready = asyncio.Event()
        self.info: RuntimeInfo | None = None
        self.known: dict[str, SandboxInfo] = {}
        self.restarts = 0
        self.outage: str | None = None  # why the runtime is declared lost; None while it answers
        self._why = ""  # the latest failure, for the message once declared
        self._deadline: asyncio.TimerHandle | None = None  # declares it lost unless it answers

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
        self._answered()  # after the vanished were reported: they restart, the rest are Ready

    def _vanished(self, sandbox_id: str, crash: LastCrash | None) -> SandboxInfo | None:
        """What to tell the worker of a sandbox the runtime no longer has: None (it is simply
        gone), or, after a crash, a Failed report saying who crashed the runtime."""
        last = self.known.get(sandbox_id)
        if crash is None or last is None:
            return None
        reason, message = crash_notice(crash, sandbox_id, self.name_of)
        return last.model_copy(update={"state": "Failed", "reason": reason, "message": message})

    def _unanswered(self, why: str) -> None:
        """The runtime did not answer: declared lost `lost_after` from the first such failure,
        unless it answers first. A timer, so a reconnect that hangs still declares it."""
        self.ready.clear()
        self._why = why
        if self.outage is None and self._deadline is None:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self.lost_after, self._declare_lost)

    def _declare_lost(self) -> None:
        self._deadline = None
        self.outage = (
            f"the pod's runtime has not answered for {self.lost_after:g}s ({self._why}): "
            "whether this sandbox still serves is unknown"
        )
        log.warning("runtime lost: %d sandboxes not ready until it answers (%s)",
                    len(self.known), self._why)  # fmt: skip
        if self.on_outage is not None:
            self.on_outage(self.outage)

    def _answered(self) -> None:
        if self._deadline is not None:  # back in time: nobody heard of it
            self._deadline.cancel()
            self._deadline = None
        if self.outage is not None:
            self.outage = None
            log.info("runtime answers again: %d sandboxes running", len(self.known))
            if self.on_outage is not None:
                self.on_outage(None)

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            if self._deadline is not None:  # stopped: nobody is left to hear it
                self._deadline.cancel()
                self._deadline = None

    async def _run(self) -> None:
        while True:
            try:
                # Subscribe before listing, so no change between the two is missed.
                async with self.runtime.watch() as events:
                    await self.relist()
                    async for event in events:
                        self.known[event.sandbox.id] = event.sandbox
                        self.listener(event.sandbox.id, event.sandbox)
                # The stream ended: the runtime went away, or cut off a watcher that fell behind.
                if self.ready.is_set():
                    log.warning("runtime event stream ended")
                self._unanswered("its event stream ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the runtime is restarting or gone: relist when it's back
                if self.ready.is_set():
                    log.warning("runtime event stream broken: %s", exc)
                self._unanswered(str(exc) or type(exc).__name__)
            await asyncio.sleep(self.retry)

    def forget(self, sandbox_id: str) -> None:
        self.known.pop(sandbox_id, None)

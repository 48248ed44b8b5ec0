"""The only writer of Sandbox status: coalesces each sandbox's reports into few patches.

Workers report every change at once; writing each would cost an API call per step (Scheduled,
Starting, Running within milliseconds). The manager keeps the latest report per sandbox and
writes transient phases only after a short coalescing window, while a settled phase (Running,
Failed, Succeeded) is written at once: so a fast start becomes one patch without making anyone
wait for the window. A write is skipped entirely when the API already shows the status we would
write (as the kubelet's status manager does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from crds import SandboxPhase
from nest_sidecar.status import Observed, desired_status, status_patch

SETTLED = frozenset({SandboxPhase.RUNNING, SandboxPhase.FAILED, SandboxPhase.SUCCEEDED})

log = logging.getLogger(__name__)

Patcher = Callable[[Mapping[str, Any], Mapping[str, Any]], Awaitable[None]]


class StatusManager:
    """Latest-wins, per-sandbox status writes after a coalescing window."""

    def __init__(self, patch: Patcher, window: float = 0.02, parallel: int = 16) -> None:
        self.patch = patch
        self.window = window
        self.parallel = parallel
        self.written: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, tuple[Mapping[str, Any], Observed]] = {}
        self.writes = 0
        self._dirty = asyncio.Event()
        self._urgent = asyncio.Event()

    def report(self, obj: Mapping[str, Any], observed: Observed) -> None:
        uid = str(obj["metadata"]["uid"])
        if uid not in self.written:
            self.written[uid] = dict(obj.get("status") or {})
        self.pending[uid] = (obj, observed)
        self._dirty.set()
        if observed.phase in SETTLED:
            self._urgent.set()

    def forget(self, uid: str) -> None:
        self.written.pop(uid, None)
        self.pending.pop(uid, None)

    async def flush(self) -> None:
        """Write every pending status, several at once: a pod starting a hundred sandboxes
        must not queue their Running behind one another's round trips."""
        batch, self.pending = self.pending, {}
        limit = asyncio.Semaphore(self.parallel)

        async def write(uid: str, obj: Mapping[str, Any], observed: Observed) -> None:
            current = self.written.get(uid, {})
            desired = desired_status(current, observed, datetime.now(UTC))
            patch = status_patch(current, desired)
            if patch is None:
                return
            async with limit:
                try:
                    await self.patch(obj, patch)
                except Exception as exc:  # retried with the next flush; never lose the latest
                    log.warning("status of %s not written: %s", obj["metadata"]["name"], exc)
                    self.pending.setdefault(uid, (obj, observed))
                    return
            self.writes += 1
            self.written[uid] = desired

        await asyncio.gather(*(write(uid, obj, obs) for uid, (obj, obs) in batch.items()))

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            # The coalescing window, cut short by a settled phase: not a synchronisation.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._urgent.wait(), self.window)
            self._dirty.clear()
            self._urgent.clear()
            await self.flush()
            if self.pending:
                self._dirty.set()

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

    def __init__(self, patch: Patcher, window: float = 0.02) -> None:
        self.patch = patch
        self.window = window
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
        batch, self.pending = self.pending, {}
        for uid, (obj, observed) in batch.items():
            current = self.written.get(uid, {})
            desired = desired_status(current, observed, datetime.now(UTC))
            patch = status_patch(current, desired)
            if patch is None:
                continue
            try:
                await self.patch(obj, patch)
            except Exception as exc:  # retried with the next report; never lose the latest
                log.warning("status of %s not written: %s", obj["metadata"]["name"], exc)
                self.pending.setdefault(uid, (obj, observed))
                continue
            self.writes += 1
            self.written[uid] = desired

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

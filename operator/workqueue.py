"""A deduplicating work queue of object keys, as client-go's workqueue, for asyncio.

Why: watch events arrive in bursts (200 sandboxes of one replica set change within a second),
while a controller needs to reconcile each key once per change, never the same key twice at
once, and retry failures with back-off. A key added while it is being processed is processed
again afterwards, so no change is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class WorkQueue:
    """Keys waiting, keys in flight, and per-key failure counts for back-off."""

    def __init__(self, name: str, base_delay: float = 0.05, max_delay: float = 30.0) -> None:
        self.name = name
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._waiting: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._windows: dict[str, bool] = {}  # throttled key -> changed again inside its window

    def add(self, key: str) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            self._queue.put_nowait(key)

    def add_throttled(self, key: str, interval: float) -> None:
        """`add` at once, then at most once per `interval` for the changes that follow.

        For keys whose every change costs a big write (a deployment's endpoint list during a
        200-sandbox rollout): the first change goes out immediately — a function waking from
        zero is not delayed — and a burst after it becomes one trailing reconcile.
        """
        if key in self._windows:
            self._windows[key] = True
            return
        self._windows[key] = False
        self.add(key)
        asyncio.get_running_loop().call_later(interval, self._close_window, key, interval)

    def _close_window(self, key: str, interval: float) -> None:
        if self._windows.pop(key, False):
            self.add_throttled(key, interval)

    def add_after(self, key: str, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.add, key)

    def _retry(self, key: str) -> None:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        self.add_after(key, min(self.max_delay, self.base_delay * 2 ** (failures - 1)))

    async def run(self, handler: Callable[[str], Awaitable[None]], workers: int = 4) -> None:
        """Process keys with `workers` concurrent tasks until cancelled."""
        await asyncio.gather(*(self._worker(handler) for _ in range(workers)))

    async def _worker(self, handler: Callable[[str], Awaitable[None]]) -> None:
        while True:
            key = await self._queue.get()
            self._waiting.discard(key)
            self._processing.add(key)
            try:
                await handler(key)
            except asyncio.CancelledError:
                raise
            except Exception:  # reconcile again later; one key's trouble never stops the queue
                log.exception("%s: reconciling %s failed; retrying", self.name, key)
                self._retry(key)
            else:
                self._failures.pop(key, None)
            finally:
                self._processing.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)

"""Noticing that an HTTP caller left while we wait to stream it the next chunk.

Why: a streamed answer waits on the function between chunks, and aiohttp (3.9 and later, without
`handler_cancellation`) tells a handler that its caller left only when it next reads or writes.
A slow generator then kept running, holding its sandbox's concurrency slot (and a thread, in
namespace mode), until its next chunk or the function's timeout, and a gateway relaying it kept
its upstream request open just as long. aiohttp's `handler_cancellation=True` would cancel a
handler the moment its connection is lost, but for every handler at every point: a whole
(unstreamed) invocation cancelled mid-way frees its slot while a subprocess sandbox still works on
it, and the next call would queue behind it and time out. So cancellation is scoped to the one
place where it is wanted: `cancelled_if_caller_leaves(request)` around the streaming loop.

How: aiohttp has no callback for a lost connection, but `request.transport` is None (or closing)
once it is lost. One timer per event loop checks the requests being streamed to (a few attribute
reads each, every POLL_SECONDS, and only while there are any) and cancels the task of a block
whose caller is gone; the block ends with `CallerLeft` (a ConnectionResetError, which the
streaming loops already treat as the caller leaving). Whatever the block awaited sees the
cancellation, exactly as with `asyncio.timeout`: the runtime's BodyStream closes the function's
stream, the gateway's relay drops its upstream request.
"""

from __future__ import annotations

import asyncio
import weakref
from types import TracebackType

from aiohttp import web

POLL_SECONDS = 0.1  # how late a departure may be noticed; nothing runs while nobody streams


class CallerLeft(ConnectionResetError):
    """The caller's connection was lost while its streamed answer was being made."""


def gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class _Watcher:
    """The requests being streamed to on one event loop, checked every POLL_SECONDS."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watched: set[CallerWatch] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, block: CallerWatch) -> None:
        self._watched.add(block)
        if self._timer is None:
            self._timer = self._loop.call_later(POLL_SECONDS, self._tick)

    def discard(self, block: CallerWatch) -> None:
        self._watched.discard(block)

    def _tick(self) -> None:
        self._timer = None
        for block in [b for b in self._watched if gone(b.request)]:
            self._watched.discard(block)
            block.fire()
        if self._watched:
            self._timer = self._loop.call_later(POLL_SECONDS, self._tick)


_watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watcher] = (
    weakref.WeakKeyDictionary()
)


def _watcher() -> _Watcher:
    loop = asyncio.get_running_loop()
    watcher = _watchers.get(loop)
    if watcher is None:
        watcher = _watchers[loop] = _Watcher(loop)
    return watcher


def cancelled_if_caller_leaves(request: web.BaseRequest) -> CallerWatch:
    """`async with cancelled_if_caller_leaves(request):` — the block is cancelled once the
    request's connection is lost, and raises CallerLeft then (a cancellation from elsewhere
    stays a cancellation), as `asyncio.timeout` does with its deadline."""
    return CallerWatch(request)


class CallerWatch:
    """One block watched for its caller's departure (see cancelled_if_caller_leaves)."""

    def __init__(self, request: web.BaseRequest) -> None:
        self.request = request
        self.fired = False
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._watcher: _Watcher | None = None

    async def __aenter__(self) -> CallerWatch:
        task = asyncio.current_task()
        assert task is not None, "cancelled_if_caller_leaves runs in a task"
        self._task = task
        self._cancelling = task.cancelling()
        self._watcher = _watcher()
        if gone(self.request):
            raise CallerLeft("the caller's connection is closed")
        self._watcher.add(self)
        return self

    def fire(self) -> None:
        if self._task is not None and not self._task.done():
            self.fired = True
            self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._watcher is not None and self._task is not None
        self._watcher.discard(self)
        if not self.fired:
            return
        # Ours: undo the cancellation (even if the block swallowed it), like asyncio.timeout.
        others = self._task.uncancel() > self._cancelling
        if exc_type is asyncio.CancelledError and not others:
            raise CallerLeft("the caller's connection was lost") from None

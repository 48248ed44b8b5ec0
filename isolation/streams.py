"""Streamed answers: chunks go from the function to the caller as they are made, bounded in time.

Why: server-sent events, ASGI streaming bodies and a generator a handler returns must reach the
caller without being buffered, in both isolation modes. A function's streamed body is a
`Streamed` (its sync or async iterator, as the function made it); whoever runs the function's
code turns it into chunks the right way for where it runs — `aiter_chunks` on an event loop
(a sync iterator's steps on the sandbox's sync path: threads in namespace mode),
`iter_chunks` in a blocking subprocess sandbox. The backends then hand the runtime a
`BodyStream`: the chunks under the function's timeout (time to the first chunk and every gap
between two) and its maximum duration, holding the sandbox's admission slot until it ends.

A chunk is bytes as they are, str as UTF-8, anything else as a JSON line (NDJSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

STREAM_TYPE = "application/octet-stream"
RunSync = Callable[[Callable[[], Any]], Awaitable[Any]]
BlockOn = Callable[[Awaitable[Any]], Any]


class StreamTimeout(Exception):
    """A streamed answer went quiet past the timeout, or ran past its maximum duration."""


@dataclass(frozen=True, slots=True)
class Streamed:
    """A response body the function produces over time: a sync or an async iterator."""

    source: Iterator[Any] | AsyncIterator[Any]


def is_stream(value: Any) -> bool:
    """Whether a handler's return value (or a Response body) is a generator to stream."""
    return isinstance(value, types.GeneratorType | types.AsyncGeneratorType | Streamed)


def streamed(value: Any) -> Streamed:
    return value if isinstance(value, Streamed) else Streamed(value)


_FRAMING = frozenset({"content-length", "transfer-encoding"})


def without_length(headers: Any) -> list[tuple[str, str]]:
    """A streamed answer's headers as pairs, without the framing its server decides (it is
    sent chunked, whatever length the function claimed)."""
    pairs = headers.items() if hasattr(headers, "items") else headers
    return [(str(k), str(v)) for k, v in pairs if str(k).lower() not in _FRAMING]


def encode_chunk(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    if isinstance(item, str):
        return item.encode()
    return json.dumps(item, separators=(",", ":")).encode() + b"\n"


class Chunks(Protocol):
    """What the backends read a stream from: async chunks, and a way to stop it early."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def __anext__(self) -> bytes: ...

    async def aclose(self) -> None: ...


class _AsyncChunks:
    """An async iterator's items as chunks (an async generator, or an ASGI app's body)."""

    def __init__(self, source: AsyncIterator[Any]) -> None:
        self._source = source

    def __aiter__(self) -> _AsyncChunks:
        return self

    async def __anext__(self) -> bytes:
        return encode_chunk(await self._source.__anext__())

    async def aclose(self) -> None:
        close = getattr(self._source, "aclose", None)
        if close is not None:
            await close()


def _step(source: Iterator[Any]) -> tuple[bool, Any]:
    """One item, or (False, None) at the end: StopIteration cannot cross a future."""
    try:
        return True, next(source)
    except StopIteration:
        return False, None


class _SyncChunks:
    """A sync iterator's items as chunks, each step on `run_sync` (never on the loop).

    Closed while a step runs on its thread (the caller left, or the step overran a bound: its
    waiter was cancelled, the thread cannot be), the generator is closed by that step itself,
    on its thread, as soon as it returns: its `finally` runs then, not whenever it is collected.
    """

    def __init__(self, source: Iterator[Any], run_sync: RunSync) -> None:
        self._source = source
        self._run_sync = run_sync
        self._lock = threading.Lock()  # the loop and the step's thread agree on who closes
        self._stepping = False
        self._closed = False

    def __aiter__(self) -> _SyncChunks:
        return self

    async def __anext__(self) -> bytes:
        more, item = await self._run_sync(self._next)
        if not more:
            raise StopAsyncIteration
        return encode_chunk(item)

    def _next(self) -> tuple[bool, Any]:
        """One step, on the sandbox's thread; it closes the generator if closed meanwhile."""
        with self._lock:
            if self._closed:
                return False, None
            self._stepping = True
        try:
            return _step(self._source)
        finally:
            with self._lock:
                self._stepping = False
                orphaned = self._closed
            if orphaned:
                self._close_now()

    def _close_now(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):  # its finally's own error: nobody to tell
                close()

    async def aclose(self) -> None:
        with self._lock:
            closed, self._closed = self._closed, True
            if closed or self._stepping:
                return  # a step runs: it closes the generator when it returns
        with contextlib.suppress(ValueError):  # "generator already executing", all the same
            await self._run_sync(self._close_now)  # its finally blocks are the function's code


class Bracketed:
    """Chunks with `enter()` / `leave()` around every step and the close: the namespace
    backend's record that the sandbox's code runs on the loop (the crash record names it)."""

    def __init__(self, chunks: Chunks, enter: Callable[[], None], leave: Callable[[], None]):
        self._chunks = chunks
        self._enter = enter
        self._leave = leave

    def __aiter__(self) -> Bracketed:
        return self

    async def __anext__(self) -> bytes:
        self._enter()
        try:
            return await self._chunks.__anext__()
        finally:
            self._leave()

    async def aclose(self) -> None:
        self._enter()
        try:
            await self._chunks.aclose()
        finally:
            self._leave()


def aiter_chunks(body: Streamed, run_sync: RunSync) -> Chunks:
    source = body.source
    if isinstance(source, AsyncIterator):
        return _AsyncChunks(source)
    return _SyncChunks(source, run_sync)


def iter_chunks(body: Streamed, block_on: BlockOn) -> Generator[bytes, None, None]:
    """The chunks in a process without a running loop (a blocking subprocess sandbox)."""
    source = body.source
    if not isinstance(source, AsyncIterator):
        try:
            for item in source:
                yield encode_chunk(item)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
        return
    chunks = _AsyncChunks(source)
    try:
        while True:
            try:
                yield block_on(chunks.__anext__())
            except StopAsyncIteration:
                return
    finally:
        block_on(chunks.aclose())


class BodyStream:
    """The chunks of one streamed answer as the runtime reads them: each within `idle_s` of
    the previous, all within `max_s`; else StreamTimeout. `done` runs once when the stream is
    over, however it ends (the sandbox's slot is released there)."""

    def __init__(
        self,
        chunks: Chunks,
        idle_s: float,
        max_s: float,
        done: Callable[[], None],
        started: float | None = None,
    ) -> None:
        """`max_s` counts from `started` (time.monotonic(), default now), never below idle_s."""
        self._chunks = chunks
        self._idle_s = idle_s
        self._max_s = max(max_s, idle_s)
        self._ends_at = (time.monotonic() if started is None else started) + self._max_s
        self._done: Callable[[], None] | None = done
        self.error: str | None = None  # why it ended early, if it did

    def __aiter__(self) -> BodyStream:
        return self

    async def __anext__(self) -> bytes:
        if self._done is None:
            raise StopAsyncIteration
        left = self._ends_at - time.monotonic()
        wait = min(self._idle_s, left)
        try:
            if wait <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait):
                return await self._chunks.__anext__()
        except TimeoutError:
            self.error = (
                f"the stream ran past its maximum duration of {self._max_s:g}s"
                if left <= self._idle_s
                else f"no chunk within the {self._idle_s:g}s timeout"
            )
            await self.aclose()
            raise StreamTimeout(self.error) from None
        except StopAsyncIteration:
            await self.aclose()
            raise
        except BaseException as exc:
            self.error = self.error or f"{type(exc).__name__}: {exc}"
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Stop it (the caller left, or it ended); idempotent."""
        done, self._done = self._done, None
        if done is None:
            return
        try:
            await self._chunks.aclose()
        finally:
            done()

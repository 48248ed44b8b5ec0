"""Framing for the runtime <-> sandbox-process channel (a unix socketpair per sandbox).

Why not pickle: the subprocess backend is the *strong* isolation mode, so the runtime must never
unpickle what a sandbox process sends (unpickling is code execution). A frame is a small JSON
header plus raw body bytes, so bodies cross without base64 and the runtime parses only JSON:

    [u32 header length][u32 body length][header JSON][body]

A streamed answer is a `start` frame (status, headers), `chunk` frames and an `end` frame, read
by a `FramedStream` on the runtime's side (see isolation.child for the frames).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, BinaryIO

_PREFIX = struct.Struct("!II")
MAX_HEADER = 1 << 20
MAX_BODY = 64 << 20
# One encoder and one decoder for every frame: json.dumps with separators builds a new encoder
# per call, and json.loads of bytes sniffs the encoding each time; a frame crosses both twice
# per invocation (the runtime's invoke, the sandbox's result), on the hot path of both.
_encode = json.JSONEncoder(separators=(",", ":")).encode
_decode = json.JSONDecoder().decode


class FrameError(Exception):
    """The peer sent something that is not a frame (or an oversized one)."""


def encode_frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = _encode(header).encode()  # ASCII: the encoder escapes everything else
    return _PREFIX.pack(len(head), len(body)) + head + body


def encode_headers(headers: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> Any:
    """Response headers for a frame: an object, or a list of pairs when a name may repeat."""
    if isinstance(headers, Mapping):
        return {str(k): str(v) for k, v in headers.items()}
    return [(str(k), str(v)) for k, v in headers]


def headers_of(header: dict[str, Any]) -> dict[str, str] | list[tuple[str, str]]:
    """The response headers a frame carries (as `encode_headers` wrote them); raises
    FrameError for anything else: the peer is not speaking the protocol."""
    headers = header["headers"]
    if type(headers) is dict:
        return headers
    if type(headers) is list and all(
        type(pair) is list and len(pair) == 2 and type(pair[0]) is str and type(pair[1]) is str
        for pair in headers
    ):
        return [(name, value) for name, value in headers]
    raise FrameError("frame headers are neither an object nor a list of string pairs")


def _decode_header(raw: bytes | bytearray) -> dict[str, Any]:
    # UTF-8, as encode_frame writes it; anything else is a ValueError like bad JSON, and the
    # channel treats both as a peer that does not speak the protocol.
    header = _decode(raw.decode())
    if not isinstance(header, dict):
        raise FrameError("frame header is not a JSON object")
    return header


def _lengths(prefix: bytes | bytearray, offset: int = 0) -> tuple[int, int]:
    head_len, body_len = _PREFIX.unpack_from(prefix, offset)
    if head_len > MAX_HEADER or body_len > MAX_BODY:
        raise FrameError(f"oversized frame: header {head_len} B, body {body_len} B")
    return head_len, body_len


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    """Raises asyncio.IncompleteReadError at EOF."""
    head_len, body_len = _lengths(await reader.readexactly(_PREFIX.size))
    data = await reader.readexactly(head_len + body_len)
    return _decode_header(data[:head_len]), data[head_len:]


def read_frame_blocking(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    """The next frame from a buffered blocking stream; None at EOF."""
    prefix = stream.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        return None
    head_len, body_len = _lengths(prefix)
    data = stream.read(head_len + body_len)
    if len(data) < head_len + body_len:
        return None
    return _decode_header(data[:head_len]), data[head_len:]


class FrameParser:
    """Splits a byte stream into frames as it arrives (for `asyncio.Protocol.data_received`)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        # Usually `data` holds whole frames and nothing is left over: they are sliced from it
        # directly (a body is then its one copy). Only a partial frame is kept, and appended to.
        pending = self._buffer
        buffer: bytes | bytearray = data
        if pending:
            pending += data
            buffer = pending
        frames = []
        start, size = 0, len(buffer)
        while size - start >= _PREFIX.size:
            head_len, body_len = _lengths(buffer, start)
            split = start + _PREFIX.size + head_len
            end = split + body_len
            if size < end:
                break
            frames.append((_decode_header(buffer[start + _PREFIX.size : split]),
                           bytes(buffer[split:end])))  # fmt: skip
            start = end
        if buffer is pending:
            del pending[:start]
        elif start < size:
            pending += memoryview(data)[start:]
        return frames


class StreamFailed(Exception):
    """The sandbox process ended a stream with an error (the function's, or it was cut)."""


class FramedStream:
    """The runtime's side of one streamed answer on a sandbox's channel: chunk frames as they
    arrive, read in order. `ended` resolves (with the error, or None) on the process's end
    frame or its death; its admission slot is released then, not before, since until then the
    process is still busy with it. Closing early asks the process to stop (`cancel`).

    Buffering is bounded: past HIGH_WATER unread bytes it calls `pause(True)` (the channel
    stops reading the process's socket, so the process blocks on its writes), and
    `pause(False)` once the reader has caught up."""

    HIGH_WATER = 1 << 20
    LOW_WATER = 256 << 10

    def __init__(self, cancel: Callable[[], None], pause: Callable[[bool], None]) -> None:
        loop = asyncio.get_running_loop()
        self._cancel: Callable[[], None] | None = cancel
        self._pause = pause
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self.ended: asyncio.Future[str | None] = loop.create_future()

    def feed(self, chunk: bytes) -> None:
        if self.ended.done() or self._cancel is None:
            return  # cancelled: what the process sent meanwhile is dropped
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > self.HIGH_WATER and not self._paused:
            self._paused = True
            self._pause(True)
        self._wake()

    def end(self, error: str | None) -> None:
        if not self.ended.done():
            self.ended.set_result(error)
        if self._paused:
            self._paused = False
            self._pause(False)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> FramedStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self.ended.done():
                error = self.ended.result()
                if error:
                    raise StreamFailed(error)
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._paused and self._size < self.LOW_WATER:
            self._paused = False
            self._pause(False)
        return chunk

    async def aclose(self) -> None:
        cancel, self._cancel = self._cancel, None
        self._chunks.clear()
        self._size = 0
        if cancel is not None and not self.ended.done():
            cancel()
        if self._paused:
            self._paused = False
            self._pause(False)

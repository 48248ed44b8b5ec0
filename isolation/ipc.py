"""Framing for the runtime <-> sandbox-process channel (a unix socketpair per sandbox).

Why not pickle: the subprocess backend is the *strong* isolation mode, so the runtime must never
unpickle what a sandbox process sends (unpickling is code execution). A frame is a small JSON
header plus raw body bytes, so bodies cross without base64 and the runtime parses only JSON:

    [u32 header length][u32 body length][header JSON][body]
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any, BinaryIO

_PREFIX = struct.Struct("!II")
MAX_HEADER = 1 << 20
MAX_BODY = 64 << 20


class FrameError(Exception):
    """The peer sent something that is not a frame (or an oversized one)."""


def encode_frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _PREFIX.pack(len(head), len(body)) + head + body


def _decode_header(raw: bytes | bytearray) -> dict[str, Any]:
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise FrameError("frame header is not a JSON object")
    return header


def _lengths(prefix: bytes | bytearray) -> tuple[int, int]:
    head_len, body_len = _PREFIX.unpack(prefix)
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
        buffer = self._buffer
        buffer += data
        frames = []
        start = 0
        while len(buffer) - start >= _PREFIX.size:
            head_len, body_len = _lengths(buffer[start : start + _PREFIX.size])
            end = start + _PREFIX.size + head_len + body_len
            if len(buffer) < end:
                break
            split = start + _PREFIX.size + head_len
            frames.append(
                (_decode_header(buffer[start + _PREFIX.size : split]), bytes(buffer[split:end]))
            )
            start = end
        del buffer[:start]
        return frames

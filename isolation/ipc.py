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
from typing import Any

_PREFIX = struct.Struct("!II")
MAX_HEADER = 1 << 20
MAX_BODY = 64 << 20


class FrameError(Exception):
    """The peer sent something that is not a frame (or an oversized one)."""


def encode_frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _PREFIX.pack(len(head), len(body)) + head + body


def _decode_header(raw: bytes) -> dict[str, Any]:
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise FrameError("frame header is not a JSON object")
    return header


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    """Raises asyncio.IncompleteReadError at EOF."""
    head_len, body_len = _PREFIX.unpack(await reader.readexactly(_PREFIX.size))
    if head_len > MAX_HEADER or body_len > MAX_BODY:
        raise FrameError(f"oversized frame: header {head_len} B, body {body_len} B")
    data = await reader.readexactly(head_len + body_len)
    return _decode_header(data[:head_len]), data[head_len:]

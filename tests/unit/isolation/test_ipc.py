"""The runtime <-> sandbox framing (isolation.ipc): frames however the bytes arrive, and what
is refused as not speaking the protocol."""

from __future__ import annotations

import io
import struct

import pytest

from isolation.ipc import (
    MAX_BODY,
    FrameError,
    FrameParser,
    encode_frame,
    read_frame_blocking,
)

FRAMES = [
    ({"t": "invoke", "id": 1, "headers": [["Host", "h"], ["X-Ü", "ß"]]}, b'{"a": 1}'),
    ({"t": "result", "id": 1, "status": 200, "headers": {}}, b""),
    ({"t": "chunk", "id": 2}, bytes(range(256)) * 64),
]
WIRE = b"".join(encode_frame(header, body) for header, body in FRAMES)


def test_a_frame_is_compact_ascii_json_then_the_raw_body() -> None:
    frame = encode_frame({"t": "x", "v": "é"}, b"\x00body")
    head_len, body_len = struct.unpack("!II", frame[:8])
    assert frame[8 : 8 + head_len] == b'{"t":"x","v":"\\u00e9"}'
    assert frame[8 + head_len :] == b"\x00body" and body_len == 5


def test_frames_in_one_piece_come_out_whole() -> None:
    assert FrameParser().feed(WIRE) == FRAMES


@pytest.mark.parametrize("step", [1, 3, 7, 100, 4096])
def test_frames_split_anywhere_come_out_the_same(step: int) -> None:
    parser = FrameParser()
    got = []
    for start in range(0, len(WIRE), step):
        got += parser.feed(WIRE[start : start + step])
    assert got == FRAMES


def test_a_partial_frame_after_whole_ones_waits_for_the_rest() -> None:
    parser = FrameParser()
    cut = len(WIRE) - 10
    assert parser.feed(WIRE[:cut]) == FRAMES[:2]
    assert parser.feed(WIRE[cut:]) == FRAMES[2:]
    assert parser.feed(b"") == []


def test_bodies_are_bytes_not_views_of_the_buffer() -> None:
    parser = FrameParser()
    parser.feed(WIRE[:5])
    frames = parser.feed(WIRE[5:])
    assert all(type(body) is bytes for _, body in frames)


def test_an_oversized_frame_is_refused_before_it_is_buffered() -> None:
    with pytest.raises(FrameError, match="oversized"):
        FrameParser().feed(struct.pack("!II", 2, MAX_BODY + 1))


@pytest.mark.parametrize("header", [b"[1, 2]", b"\xff\xfe{}", b"{nope"])
def test_a_header_that_is_not_a_utf8_json_object_is_refused(header: bytes) -> None:
    # Whatever the error's class, the channel treats any as a peer not speaking the protocol.
    with pytest.raises((FrameError, ValueError)):
        FrameParser().feed(struct.pack("!II", len(header), 0) + header)


def test_blocking_reads_give_the_same_frames_then_none() -> None:
    stream = io.BytesIO(WIRE)
    assert [read_frame_blocking(stream) for _ in FRAMES] == FRAMES
    assert read_frame_blocking(stream) is None

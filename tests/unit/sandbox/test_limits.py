"""The body limits shared by the gateway and the runtime: size, JSON nesting, problems, flags."""

from __future__ import annotations

import argparse
import codecs
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox import limits
from sandbox.limits import BodyLimits, BodyTooDeep, BodyTooLarge, InvalidJSON

SMALL = BodyLimits(max_bytes=100, max_depth=4)


def nested(levels: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * levels + close * levels


def objects(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


def depth_of(value: Any) -> int:
    """The reference: nesting of a decoded value, as the decoder recursed into it."""
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


def test_the_defaults_are_lambdas_payload_and_below_the_interpreters_recursion_limit() -> None:
    assert BodyLimits(6 * 1024 * 1024, 512) == limits.DEFAULT_LIMITS
    # Whatever passes must decode in the sandbox, where the handler runs some frames deep.
    json.loads(nested(limits.DEFAULT_MAX_JSON_DEPTH))
    json.dumps(json.loads(nested(limits.DEFAULT_MAX_JSON_DEPTH)))


@pytest.mark.parametrize("make", [nested, objects, lambda n: nested(n, b"{", b"}")])
def test_nesting_exactly_at_the_limit_passes_one_more_is_refused(make: Any) -> None:
    limits.check_body(make(4), BodyLimits(max_bytes=10_000, max_depth=4))
    with pytest.raises(BodyTooDeep, match="more than 4 levels"):
        limits.check_body(make(5), BodyLimits(max_bytes=10_000, max_depth=4))


def test_a_hundred_thousand_levels_are_refused_closed_or_not() -> None:
    assert limits.nested_deeper_than(nested(100_000), 512)
    assert limits.nested_deeper_than(b'{"a": ' + b"[" * 100_000, 512)
    assert limits.nested_deeper_than(b"\n\t " + nested(100_000), 512)
    assert limits.nested_deeper_than(codecs.BOM_UTF8 + nested(100_000), 512)


def test_brackets_inside_strings_do_not_count_and_escapes_are_read_as_json_reads_them() -> None:
    assert not limits.nested_deeper_than(b'["' + b"[" * 1000 + b'"]', 4)
    assert not limits.nested_deeper_than(b'["\\"' + b"[" * 1000 + b'"]', 4)  # \" stays inside
    # `\\` ends in a real quote: what follows is structure again.
    assert limits.nested_deeper_than(b'["\\\\", ' + nested(10) + b"]", 4)
    # An unterminated string hides the rest, as it does from a decoder.
    assert not limits.nested_deeper_than(b'["' + b"[" * 1000, 4)


@pytest.mark.parametrize(
    "body",
    [b"x" + b"[" * 1000, b'"' + b"[" * 1000 + b'"', bytes(range(256)) * 40, b"12 " + b"{" * 999],
)
def test_bodies_that_are_not_json_objects_or_arrays_pass_untouched(body: bytes) -> None:
    limits.check_body(body, BodyLimits(max_bytes=1 << 20, max_depth=4))


json_values = st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}"\\ab\n'),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=3), inner, max_size=4)
    ),
    max_leaves=40,
)


@given(value=json_values, limit=st.integers(1, 7), indent=st.sampled_from([None, 1]))
def test_the_byte_scan_agrees_with_the_decoded_depth(value: Any, limit: int, indent: Any) -> None:
    body = json.dumps(value, indent=indent, ensure_ascii=False).encode()
    assert limits.nested_deeper_than(body, limit) == (depth_of(value) > limit)


@given(prefix=st.integers(0, 3000), offset=st.integers(-2, 1), limit=st.integers(1, 600))
def test_the_block_walk_finds_the_deepest_point_wherever_it_is(
    prefix: int, offset: int, limit: int
) -> None:
    """Shallow noise (depth 2), then a tower reaching just below, at or just above the limit."""
    tower = max(0, limit - 1 + offset)
    body = b"[" + b"[1]," * prefix + nested(tower) + b"]"
    depth = 1 + max(1 if prefix else 0, tower)
    assert limits.nested_deeper_than(body, limit) == (depth > limit)


def test_size_exactly_at_the_limit_passes_one_byte_more_is_refused() -> None:
    limits.check_body(b"x" * 100, SMALL)
    with pytest.raises(BodyTooLarge, match="larger than the limit of 100 bytes"):
        limits.check_body(b"x" * 101, SMALL)
    with pytest.raises(BodyTooLarge, match=r"6291456 bytes \(6 MiB\)"):
        limits.check_size(6 * 1024 * 1024 + 1, limits.DEFAULT_LIMITS)


async def test_the_async_check_refuses_the_same_bodies_off_the_loop() -> None:
    big = BodyLimits(max_bytes=8 << 20, max_depth=512)
    deep = b"[1]," * (limits.OFF_LOOP_BYTES // 4) + nested(600)
    shallow = b"[" + b"[1]," * (limits.OFF_LOOP_BYTES // 4) + b"1]"
    with pytest.raises(BodyTooDeep):
        await limits.check_body_async(b"[" + deep + b"]", big)
    await limits.check_body_async(shallow, big)
    with pytest.raises(BodyTooDeep):
        await limits.check_body_async(nested(5), SMALL)
    with pytest.raises(BodyTooLarge):
        await limits.check_body_async(b" " * 101, SMALL)


def test_decode_json_refuses_invalid_deep_and_large_bodies_with_typed_errors() -> None:
    assert limits.decode_json(b'{"a": [1]}', SMALL) == {"a": [1]}
    with pytest.raises(InvalidJSON, match="not JSON"):
        limits.decode_json(b"{x", SMALL)
    with pytest.raises(InvalidJSON):
        limits.decode_json(b"\xff\xfe{", SMALL)
    with pytest.raises(BodyTooDeep):
        limits.decode_json(nested(5), SMALL)
    with pytest.raises(BodyTooLarge):
        limits.decode_json(b"[" + b" " * 100 + b"]", SMALL)
    # UTF-32 JSON is not what the byte scan reads; the decoder's own recursion limit still holds.
    utf32 = nested(100_000).decode().encode("utf-32-be")
    with pytest.raises(BodyTooDeep):
        limits.decode_json(utf32, BodyLimits(max_bytes=1 << 30, max_depth=512))


async def test_decode_json_async_is_decode_json() -> None:
    assert await limits.decode_json_async(b"[[1]]", SMALL) == [[1]]
    with pytest.raises(BodyTooDeep):
        await limits.decode_json_async(nested(5), SMALL)


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (limits.too_large(SMALL), 413, "payload-too-large"),
        (limits.too_deep(SMALL), 400, "json-too-deep"),
        (InvalidJSON("the body is not JSON: x"), 400, "invalid-json"),
    ],
)
def test_each_refusal_is_a_problem_document(
    error: limits.BodyRefused, status: int, kind: str
) -> None:
    found = limits.problem(error, "/v1/x")
    assert found == {
        "type": "https://nest.sandbox.dev/problems/" + kind,
        "title": error.title,
        "status": status,
        "detail": error.detail,
        "instance": "/v1/x",
    }
    response = limits.problem_response(error, "/v1/x")
    assert response.status == status
    assert response.content_type == "application/problem+json"
    assert response.text is not None and json.loads(response.text) == found


def test_the_problem_base_is_the_gateways() -> None:
    from gateway.errors import PROBLEM_BASE

    assert limits.PROBLEM_BASE == PROBLEM_BASE


def parse(argv: list[str], env: dict[str, str]) -> BodyLimits:
    parser = argparse.ArgumentParser()
    limits.add_flags(parser, env)
    return limits.from_args(parser.parse_args(argv))


def test_flags_over_env_over_defaults() -> None:
    assert parse([], {}) == limits.DEFAULT_LIMITS
    env = {limits.ENV_MAX_BODY_BYTES: "1Mi", limits.ENV_MAX_JSON_DEPTH: "64"}
    assert parse([], env) == BodyLimits(1024 * 1024, 64)
    flagged = parse(["--max-body-bytes", "512Ki", "--max-json-depth", "8"], env)
    assert flagged == BodyLimits(512 * 1024, 8)
    assert parse(["--max-body-bytes", "1000"], {}).max_bytes == 1000


@pytest.mark.parametrize(
    "argv", [["--max-body-bytes", "6MB"], ["--max-body-bytes", "0"], ["--max-json-depth", "-1"]]
)
def test_bad_limits_are_refused_at_start(argv: list[str], capsys: Any) -> None:
    with pytest.raises(SystemExit):
        parse(argv, {})
    assert "--max-" in capsys.readouterr().err
    with pytest.raises(ValueError):
        BodyLimits(max_bytes=0)

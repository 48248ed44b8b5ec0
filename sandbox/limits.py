"""Request body limits, in one place for the gateway and the runtime: size and JSON nesting.

Why one module: the gateway and the runtime's data plane see the same bytes (the gateway
forwards the body untouched), so they must refuse the same bodies with the same answer. Before
this module they did not: the gateway took 6 MiB, the runtime 1 MiB and answered aiohttp's plain
text 413; a 100,000-level nested JSON body reached the sandbox (where decoding it exceeded the
interpreter's recursion limit) and made the gateway's management API answer 500. Now:

- **Size**: at most `max_bytes` (default 6 MiB, AWS Lambda's synchronous payload limit), after
  any Content-Encoding is undone. aiohttp's `client_max_size` is set to exactly this (aiohttp
  refuses bodies *longer* than it, so a body of exactly the limit passes), and its
  HTTPRequestEntityTooLarge becomes `BodyTooLarge`. More: 413.
- **Nesting**: a body that is JSON to Nest (its first non-blank byte, after an optional UTF-8
  BOM, is `[` or `{`: what the sandbox would decode into nested values) may nest arrays and
  objects at most `max_depth` levels (default 512), counted outside strings. More: 400, whether
  or not the JSON is valid further on. 512 is well under CPython's default recursion limit
  (1000), so every body that passes also decodes in the sandbox and can be encoded back by the
  handler. Bodies that are not JSON (text, binary) are passed through untouched, as the
  sandbox passes them to the handler as bytes.
- **Invalid JSON** is a 400 only where JSON is required (the gateway's management API, the
  runtime's control API): `decode_json`.

Refusals are RFC 9457 problem documents (`problem`, `problem_response`) whose `type` is under
the gateway's problem base, so a caller sees the same document from either. The depth check
costs two byte counts for ordinary bodies; only a body with more opening brackets than the limit
gets the full scan (C-level string removal, then a block-wise count), which for large bodies
runs off the event loop (`check_body_async`).
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from aiohttp import web

MIB = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 6 * MIB
DEFAULT_MAX_JSON_DEPTH = 512
# One name for both processes: the gateway and the runtime must agree.
ENV_MAX_BODY_BYTES = "NEST_MAX_BODY_BYTES"
ENV_MAX_JSON_DEPTH = "NEST_MAX_JSON_DEPTH"
PROBLEM_BASE = "https://nest.sandbox.dev/problems/"  # every Nest problem type, gateway's too
PROBLEM_JSON = "application/problem+json"
# A full depth scan of a body larger than this runs in a thread: it can take ~0.3 s at 6 MiB.
OFF_LOOP_BYTES = 256 * 1024

_BLANK = b" \t\n\r"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_AS_PARENS = bytes.maketrans(b"[{]}", b"(())")
_OPEN = ord("(")
_SIZE = re.compile(r"(\d+)(Ki|Mi)?")


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """What a request body may be; `max_bytes` is also aiohttp's `client_max_size`."""

    max_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_depth: int = DEFAULT_MAX_JSON_DEPTH

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_depth < 1:
            raise ValueError(f"body limits must be at least 1, not {self}")


DEFAULT_LIMITS = BodyLimits()


class BodyRefused(ValueError):
    """A body refused by the limits; `status`, `kind` and `title` choose its problem."""

    status: ClassVar[int] = 400
    kind: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BodyTooLarge(BodyRefused):
    status, kind, title = 413, "payload-too-large", "Payload too large"


class BodyTooDeep(BodyRefused):
    status, kind, title = 400, "json-too-deep", "JSON nested too deeply"


class InvalidJSON(BodyRefused):
    status, kind, title = 400, "invalid-json", "Body is not JSON"


def _bytes_text(count: int) -> str:
    if count % MIB == 0:
        return f"{count} bytes ({count // MIB} MiB)"
    return f"{count} bytes"


def too_large(limits: BodyLimits) -> BodyTooLarge:
    return BodyTooLarge(f"the body is larger than the limit of {_bytes_text(limits.max_bytes)}")


def too_deep(limits: BodyLimits) -> BodyTooDeep:
    return BodyTooDeep(
        f"the JSON body is nested too deeply: more than {limits.max_depth} levels of arrays "
        "and objects"
    )


# ---- the checks (pure) ------------------------------------------------------------------------


def looks_like_json(body: bytes) -> bool:
    """Whether the sandbox would decode `body` into nested values: `[` or `{` first."""
    if body[:1] in (b"[", b"{"):
        return True
    stripped = body.removeprefix(codecs.BOM_UTF8).lstrip(_BLANK)
    return stripped[:1] in (b"[", b"{")


def _surely_shallow(body: bytes, limit: int) -> bool:
    """True when `body` cannot nest deeper than `limit`: it has no more opening brackets."""
    return len(body) <= limit or body.count(b"[") + body.count(b"{") <= limit


def _structure(body: bytes) -> bytes:
    """The brackets outside JSON strings, as `(` and `)`, in order.

    Escapes go first (`\\\\` before `\\"`, which is how JSON pairs them inside a string), so
    every remaining `"` opens or closes a string and the even parts of a split are outside.
    An unterminated string hides the rest, as it would from a decoder.
    """
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    return outside.translate(None, _NOT_BRACKETS).translate(_AS_PARENS)


def _deeper_than(parens: bytes, limit: int) -> bool:
    """Whether the running depth of `parens` ever exceeds `limit`.

    Block-wise: a block whose opening brackets cannot lift the depth past the limit is skipped
    with one count; only blocks near the limit are walked byte by byte.
    """
    depth = 0
    step = max(1, limit // 2)
    for start in range(0, len(parens), step):
        end = min(start + step, len(parens))
        opens = parens.count(b"(", start, end)
        if depth + opens <= limit:
            depth += 2 * opens - (end - start)
            continue
        for byte in parens[start:end]:
            depth += 1 if byte == _OPEN else -1
            if depth > limit:
                return True
    return False


def nested_deeper_than(body: bytes, limit: int) -> bool:
    """Whether `body` is JSON to Nest and nests arrays/objects more than `limit` levels."""
    if _surely_shallow(body, limit) or not looks_like_json(body):
        return False
    parens = _structure(body)
    if parens.count(b"(") <= limit:
        return False
    return _deeper_than(parens, limit)


def check_size(size: int, limits: BodyLimits) -> None:
    if size > limits.max_bytes:
        raise too_large(limits)


def check_body(body: bytes, limits: BodyLimits) -> None:
    """Raises BodyTooLarge or BodyTooDeep; any other body passes (not JSON: untouched)."""
    check_size(len(body), limits)
    if nested_deeper_than(body, limits.max_depth):
        raise too_deep(limits)


async def check_body_async(body: bytes, limits: BodyLimits) -> None:
    """`check_body`, with the full scan of a large body in a thread (the loop serves others)."""
    check_size(len(body), limits)
    if _surely_shallow(body, limits.max_depth):
        return
    if len(body) <= OFF_LOOP_BYTES:
        deep = nested_deeper_than(body, limits.max_depth)
    else:
        deep = await asyncio.to_thread(nested_deeper_than, body, limits.max_depth)
    if deep:
        raise too_deep(limits)


def _loads(body: bytes, limits: BodyLimits) -> Any:
    try:
        return json.loads(body)
    except RecursionError:  # UTF-16/32 JSON, which the byte scan does not read
        raise too_deep(limits) from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidJSON(f"the body is not JSON: {exc}") from None


def decode_json(body: bytes, limits: BodyLimits) -> Any:
    """The decoded body where JSON is required; raises BodyTooLarge, BodyTooDeep, InvalidJSON."""
    check_body(body, limits)
    return _loads(body, limits)


async def decode_json_async(body: bytes, limits: BodyLimits) -> Any:
    await check_body_async(body, limits)
    return _loads(body, limits)


# ---- aiohttp: reading and answering ----------------------------------------------------------


async def read_body(request: web.Request, limits: BodyLimits) -> bytes:
    """The whole body; raises BodyTooLarge instead of aiohttp's plain-text 413.

    The application's `client_max_size` must be `limits.max_bytes` (aiohttp stops reading
    there); the size is checked here too, so a mismatch refuses rather than passes.
    """
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(limits) from None
    check_size(len(body), limits)
    return body


class Refusal(Protocol):
    """What a problem document is made of: a refused body, or any of the gateway's errors."""

    @property
    def kind(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def status(self) -> int: ...
    @property
    def detail(self) -> str: ...


def problem(error: Refusal, instance: str | None = None) -> dict[str, Any]:
    """The RFC 9457 problem document of `error`; `instance` is the request path."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + error.kind,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
    }
    if instance is not None:
        body["instance"] = instance
    return body


def problem_response(error: BodyRefused, instance: str | None = None) -> web.Response:
    return web.Response(
        status=error.status, text=json.dumps(problem(error, instance)), content_type=PROBLEM_JSON
    )


# ---- configuration: the same flags and env at the gateway and the runtime ---------------------


def parse_size(text: str) -> int:
    """Bytes, as a number or with a binary suffix: `6291456`, `6Mi`, `512Ki`."""
    found = _SIZE.fullmatch(text.strip())
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (bytes, or a number with Ki/Mi)")
    unit = {None: 1, "Ki": 1024, "Mi": MIB}[found.group(2)]
    return _at_least_one(int(found.group(1)) * unit, text)


def _positive(text: str) -> int:
    try:
        return _at_least_one(int(text), text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _at_least_one(value: int, text: str) -> int:
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def add_flags(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """`--max-body-bytes` and `--max-json-depth` (env NEST_MAX_BODY_BYTES, NEST_MAX_JSON_DEPTH)."""
    parser.add_argument(
        "--max-body-bytes",
        type=parse_size,
        default=env.get(ENV_MAX_BODY_BYTES, str(DEFAULT_MAX_BODY_BYTES)),
        help="largest request body, e.g. 6Mi; more: 413 (env "
        f"{ENV_MAX_BODY_BYTES}, default {DEFAULT_MAX_BODY_BYTES}; keep the gateway's and the "
        "runtimes' equal)",
    )
    parser.add_argument(
        "--max-json-depth",
        type=_positive,
        default=env.get(ENV_MAX_JSON_DEPTH, str(DEFAULT_MAX_JSON_DEPTH)),
        help="deepest nesting of arrays/objects in a JSON body; more: 400 (env "
        f"{ENV_MAX_JSON_DEPTH}, default {DEFAULT_MAX_JSON_DEPTH})",
    )


def from_args(args: argparse.Namespace) -> BodyLimits:
    return BodyLimits(max_bytes=args.max_body_bytes, max_depth=args.max_json_depth)

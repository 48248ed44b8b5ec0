"""The function contract: what a handler receives and what it may return.

Why it lives in `isolation` and not in `sandbox`: the backends are the code that builds a
context, calls the handler and turns its return value into a response, and `isolation` must not
import anything of ours (it is the bottom layer, like runc under a CRI runtime). So the contract
objects live here, with no dependencies beyond the standard library, and `sandbox` — the package
users write against — re-exports them (`from sandbox import Response, before_invoke`). There is
exactly one `Response` class in the process, whichever name it is imported under.

Function-level hooks are plain decorators that only *mark* a function (an attribute); the loader
collects marked functions from the handler's module. There is no global registry, which matters
in namespace mode where hundreds of sandboxes share one interpreter.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from isolation.streams import STREAM_TYPE, Streamed, is_stream, streamed

F = TypeVar("F", bound=Callable[..., Any])

HOOK_ATTR = "__nest_hook__"
JSON_TYPE = "application/json"


class HookKind(StrEnum):
    """Lifecycle points a hook can attach to (see docs/isolation.md for the order)."""

    RUNTIME_START = "runtime_start"
    FUNCTION_START = "function_start"
    BEFORE_INVOKE = "before_invoke"
    AFTER_INVOKE = "after_invoke"
    CLOSE = "close"


def _mark(kind: HookKind) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        setattr(fn, HOOK_ATTR, kind)
        return fn

    return decorate


on_function_start = _mark(HookKind.FUNCTION_START)
"""`fn(info: FunctionInfo)` — after the module loaded, before the sandbox reports ready."""
before_invoke = _mark(HookKind.BEFORE_INVOKE)
"""`fn(event, context)` — before the handler; returning a `Response` short-circuits it."""
after_invoke = _mark(HookKind.AFTER_INVOKE)
"""`fn(event, context, response)` — after the handler; returning a `Response` replaces it."""
on_close = _mark(HookKind.CLOSE)
"""`fn(info: FunctionInfo)` — when the sandbox stops gracefully."""


@dataclass(frozen=True, slots=True)
class Request:
    """The HTTP request that triggered an invocation, as the handler sees it.

    `query` and `headers` answer one value per name (the `nest` contract: the first, and
    headers case-insensitively, in both isolation modes); `raw_query` and `header_items` keep
    every value in order, for the interfaces that expose repeats (API Gateway's multiValue
    fields, ASGI, WSGI). `root_path` is the prefix the function is mounted under
    (`/fn/{namespace}/{name}`); `path` is what follows it, decoded, and `raw_path` the same as
    sent (percent-escapes kept; empty: not known, `path` re-encoded stands in). `client` is the
    caller's address as the gateway saw it.
    """

    method: str = "POST"
    path: str = "/"
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw_query: str = ""
    # Any collection of pairs: the runtime hands over its multidict's items view (no copy).
    header_items: Collection[tuple[str, str]] = ()
    root_path: str = ""
    client: str = ""
    raw_path: str = ""


Headers = Mapping[str, str] | Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Response:
    """An explicit HTTP response. `body` may be bytes, str or any JSON-able value.

    `headers` is a mapping, or a sequence of (name, value) pairs when a name repeats
    (Set-Cookie).
    """

    status: int = 200
    headers: Headers = field(default_factory=dict)
    body: Any = b""


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """Identity and limits of one sandbox, shared by every invocation of it."""

    sandbox_id: str
    function_name: str
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 128
    timeout_s: float = 30.0


class Context:
    """Per-invocation context, answering both to Nest names and to AWS Lambda's names."""

    __slots__ = ("deadline", "function", "logger", "request", "request_id")

    def __init__(
        self,
        *,
        request: Request,
        request_id: str,
        deadline: float,
        function: FunctionInfo,
        logger: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.request = request
        self.request_id = request_id
        self.deadline = deadline  # time.monotonic() seconds: CLOCK_MONOTONIC is system-wide
        self.function = function
        self.logger = logger

    @property
    def sandbox_id(self) -> str:
        return self.function.sandbox_id

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))

    # AWS Lambda's attribute names, so existing Lambda handlers run unchanged.
    @property
    def aws_request_id(self) -> str:
        return self.request_id

    @property
    def function_name(self) -> str:
        return self.function.function_name

    @property
    def function_version(self) -> str:
        return self.function.function_version

    @property
    def memory_limit_in_mb(self) -> int:
        return self.function.memory_limit_in_mb

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:nest:function:local:{self.function.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/nest/functions/{self.function.function_name}"

    @property
    def log_stream_name(self) -> str:
        return self.function.sandbox_id


_REQUEST_ID_PREFIX = os.urandom(8).hex()
_request_serial = itertools.count(1)


def new_request_id() -> str:
    """32 hex digits, like a uuid4's: a random half per process and a counter half.

    Why not uuid4: it costs a getrandom() syscall and a UUID object per invocation, several
    times the cost of the rest of the id's life. Ids need to be unique, not unpredictable.
    """
    return f"{_REQUEST_ID_PREFIX}{next(_request_serial):016x}"


class InvalidEvent(ValueError):
    """A JSON body that cannot be an event: nested past the interpreter's recursion limit."""


def decode_event(body: bytes) -> Any:
    """The handler's `event`: decoded JSON, `None` for an empty body, else the raw bytes."""
    if not body:
        return None
    try:
        return json.loads(body)
    except RecursionError:
        raise InvalidEvent("the JSON body is nested too deeply to decode") from None
    except ValueError:
        return body


def problem(status: int, title: str, message: str) -> Response:
    """An RFC 9457 problem+json response."""
    detail = {"type": "about:blank", "title": title, "status": status, "detail": message}
    headers = {"Content-Type": "application/problem+json"}
    return Response(status, headers, json.dumps(detail).encode())


def bad_request(message: str) -> Response:
    """400 as problem+json: the caller's fault, and the sandbox lives on."""
    return problem(400, "Bad Request", message)


def _encode_body(body: Any) -> tuple[bytes | Streamed, str]:
    """The body as bytes (or a generator's `Streamed` chunks), and the Content-Type it implies
    when the handler named none."""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), "application/octet-stream"
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    try:
        return json.dumps(body, separators=(",", ":")).encode(), JSON_TYPE
    except TypeError:
        if is_stream(body):  # checked only here: a JSON answer pays nothing for streaming
            return streamed(body), STREAM_TYPE
        raise


def _with_type(headers: Headers, content_type: str) -> Headers:
    if isinstance(headers, Mapping):
        out = dict(headers)
        out.setdefault("Content-Type", content_type)
        return out
    pairs = [(str(name), str(value)) for name, value in headers]
    if not any(name.lower() == "content-type" for name, _ in pairs):
        pairs.append(("Content-Type", content_type))
    return pairs


def to_response(value: Any) -> Response:
    """Normalise whatever a handler returned into a `Response` whose body is bytes, or
    `Streamed` for a generator (sync or async: each item a chunk, see isolation.streams).

    Raises TypeError/ValueError when the value is not JSON-able; callers turn that into a 500.
    """
    if isinstance(value, Response):
        body, content_type = _encode_body(value.body)
        return Response(value.status, _with_type(value.headers, content_type), body)
    body, content_type = _encode_body(value)
    return Response(200, {"Content-Type": content_type}, body)


def error_response(exc: BaseException, status: int = 500) -> Response:
    """The response for a failed invocation: type and message, never the traceback."""
    body = json.dumps({"error": type(exc).__name__, "message": str(exc)}).encode()
    return Response(status, {"Content-Type": JSON_TYPE}, body)

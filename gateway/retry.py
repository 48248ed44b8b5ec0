"""When a failed attempt may go to another sandbox, and what the caller is told when it may not.

An invocation must never run twice unless running it twice is harmless, and must never be lost
when it certainly did not run. Between the two lies a connection that broke after the request was
written and before any byte of the answer came back: the sandbox may have run it. The rule is
RFC 9110 §9.2.2 (a client may retry a request automatically when its method is idempotent, or it
knows otherwise that the request is) as Go's `net/http` Transport applies it
(`persistConn.shouldRetryRequest`: nothing written → retry; otherwise only a replayable request,
an idempotent method or one carrying `Idempotency-Key`):

| failure (aiohttp's type)                                         | ran?  | sent elsewhere    |
|------------------------------------------------------------------|-------|-------------------|
| no connection: refused, unreachable (`ClientConnectorError`)     | no    | always            |
| aiohttp wrote nothing: the connection was already closing        | no    | always            |
|   (the writer's `ConnectionResetError`)                          |       |                   |
| closed before any byte of the answer (`ServerDisconnectedError`) | maybe | if replayable     |
| reset before the answer (`ClientOSError` ECONNRESET/EPIPE/...)   | maybe | if replayable     |
| anything once the answer began (partial head, cut body)          | yes   | never (502)       |

A reused keep-alive connection the runtime closed just as the request went out looks, from here,
exactly like a runtime that died with the call in flight (the bytes went into the socket, EOF came
back), so it too is retried only when replayable; Go draws the same line. This module is pure
(exception in, decision out) so the table above is tested as a table.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Mapping

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 §9.2.2: the methods whose repetition the client may assume harmless.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# draft-ietf-httpapi-idempotency-key-header; Go's isReplayable also honours the X- form.
IDEMPOTENCY_HEADERS = frozenset({"idempotency-key", "x-idempotency-key"})
# The errnos of a connection the peer tore down (a process that died holds no connection open).
RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN})
# The writer's own refusal (aiohttp/http_writer.py, a ConnectionResetError: since 3.10 the
# ClientConnectionResetError subclass): it wrote nothing because the transport was already
# closing. aiohttp raises the same type from drain() after a write, which did send, so
# the message tells them apart; an aiohttp that words it otherwise only makes the gateway more
# cautious (the replayable rule), never less.
_UNWRITTEN = "Cannot write to closing transport"

# Every ready sandbox refused: retry after this, doubling while they keep refusing, capped.
HOLD_RETRY_FIRST_SECONDS = 0.1
HOLD_RETRY_MAX_SECONDS = 1.0


class Failure(enum.Enum):
    """How an attempt failed before the sandbox's answer began."""

    REFUSED = "Unreachable"  # no connection could be opened
    UNSENT = "Unsent"  # a connection, but nothing was written to it
    CLOSED = "Closed"  # closed (EOF) after the request, before any byte of the answer
    RESET = "Reset"  # reset after the request, before the answer

    @property
    def ran(self) -> bool:
        """Whether the sandbox may have run the request."""
        return self in (Failure.CLOSED, Failure.RESET)

    @property
    def ejects(self) -> bool:
        """Whether the address looks broken (outlier ejection, `RoutingTable.eject`): a write
        aiohttp declined on a closing pooled connection says nothing the next connection will
        not, every other failure here says the runtime is not there or not well."""
        return self is not Failure.UNSENT


def replayable(method: str, headers: Mapping[str, str]) -> bool:
    """Whether the caller's request may run more than once: an idempotent method, or an
    Idempotency-Key (the caller promises it deduplicates, or does not mind)."""
    if method.upper() in IDEMPOTENT_METHODS:
        return True
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):  # an aiohttp request's: no scan
        return any(name in headers for name in IDEMPOTENCY_HEADERS)
    return any(name.lower() in IDEMPOTENCY_HEADERS for name in headers)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and its causes: aiohttp wraps a body-write failure in a ClientOSError whose cause
    is the writer's own error."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__
    return seen


def failure_of(exc: BaseException) -> Failure | None:
    """The failure of an attempt that raised `exc` before the answer's head was read, or None
    when `exc` is no connection failure (an answer that began and broke, a malformed answer):
    those are reported, never retried."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Failure.REFUSED
    chain = _chain(exc)
    if any(isinstance(e, ConnectionResetError) and str(e) == _UNWRITTEN for e in chain):
        return Failure.UNSENT
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        # Its message is the partial head when some of the answer arrived: the request ran.
        return Failure.CLOSED if isinstance(exc.message, str) else None
    for e in chain:
        if isinstance(e, OSError) and e.errno in RESET_ERRNOS:
            return Failure.RESET
    if any(isinstance(e, ConnectionResetError) for e in chain):
        return Failure.RESET  # drain()'s "Connection lost": written, then the connection went
    return None


def retryable(failure: Failure, replayable: bool) -> bool:
    """Whether an attempt that failed so may be sent to another sandbox."""
    return not failure.ran or replayable


def not_retried(sandbox: str, function: tuple[str, str], failure: Failure, method: str) -> str:
    """The 502's detail for an attempt that may have run and so was not sent elsewhere."""
    how = "closed" if failure is Failure.CLOSED else "reset"
    return (
        f"sandbox {sandbox} of {function[0]}/{function[1]} {how} the connection before "
        f"answering: its process died with the call in flight. Not retried: a {method.upper()} "
        "without an Idempotency-Key header may already have run; send one to let the gateway "
        "retry on another sandbox"
    )


def next_hold_retry(previous: float | None) -> float:
    """The wait before trying every refusing sandbox again: 0.1 s doubling to 1 s."""
    if previous is None:
        return HOLD_RETRY_FIRST_SECONDS
    return min(previous * 2, HOLD_RETRY_MAX_SECONDS)

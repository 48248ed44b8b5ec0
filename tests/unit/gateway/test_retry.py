"""The retry rule as a table: which failures may go to another sandbox, and for which requests.

The exceptions are built as aiohttp raises them (the types, errnos and cause chains seen from a
real server that resets, closes, or sends half a head: tests/unit/gateway/test_invoke_faults.py
checks the same over real sockets).
"""

from __future__ import annotations

import errno

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict

from gateway.retry import (
    HOLD_RETRY_FIRST_SECONDS,
    HOLD_RETRY_MAX_SECONDS,
    Failure,
    failure_of,
    next_hold_retry,
    not_retried,
    replayable,
    retryable,
)


def _caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


def _connector_error() -> aiohttp.ClientConnectorError:
    key = ConnectionKey("127.0.0.9", 8080, False, True, None, None, None)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(errno.ECONNREFUSED, "refused"))


def _partial_head() -> aiohttp.ServerDisconnectedError:
    # aiohttp passes the parser's unfinished message: some of the answer had arrived.
    return aiohttp.ServerDisconnectedError(message=object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (_connector_error(), Failure.REFUSED),
        (aiohttp.ServerDisconnectedError(), Failure.CLOSED),
        (aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"), Failure.RESET),
        (aiohttp.ClientOSError(errno.EPIPE, "Broken pipe"), Failure.RESET),
        # a body write that failed: aiohttp's wrapper has no errno, its cause says why
        (
            _caused(
                aiohttp.ClientOSError(None, "Can not write request body for http://x/"),
                aiohttp.ClientConnectionResetError("Cannot write to closing transport"),
            ),
            Failure.UNSENT,
        ),
        (aiohttp.ClientConnectionResetError("Cannot write to closing transport"), Failure.UNSENT),
        # drain() after a write: bytes went out, so it may have run
        (aiohttp.ClientConnectionResetError("Connection lost"), Failure.RESET),
        (_partial_head(), None),
        (aiohttp.ClientPayloadError("Response payload is not completed"), None),
        (aiohttp.ClientResponseError(None, (), status=400, message="bad status line"), None),  # type: ignore[arg-type]
        (aiohttp.ClientOSError(errno.ENOMEM, "out of memory"), None),
    ],
)
def test_failures_are_classified_by_what_they_prove(
    exc: BaseException, failure: Failure | None
) -> None:
    assert failure_of(exc) == failure


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        ("GET", {}, True),
        ("head", {}, True),
        ("OPTIONS", {}, True),
        ("TRACE", {}, True),
        ("PUT", {}, True),
        ("DELETE", {}, True),
        ("POST", {}, False),
        ("PATCH", {}, False),
        ("POST", {"Idempotency-Key": "a1"}, True),
        ("PATCH", CIMultiDict({"idempotency-key": "a1"}), True),
        ("POST", {"X-Idempotency-Key": "a1"}, True),
        ("POST", {"X-Request-Id": "a1"}, False),
    ],
)
def test_replayable_is_an_idempotent_method_or_an_idempotency_key(
    method: str, headers: dict[str, str], expected: bool
) -> None:
    assert replayable(method, headers) is expected


@pytest.mark.parametrize(
    ("failure", "replayable_", "expected"),
    [
        (Failure.REFUSED, False, True),
        (Failure.UNSENT, False, True),
        (Failure.CLOSED, False, False),
        (Failure.RESET, False, False),
        (Failure.CLOSED, True, True),
        (Failure.RESET, True, True),
        (Failure.REFUSED, True, True),
    ],
)
def test_only_what_cannot_have_run_or_may_run_twice_is_retried(
    failure: Failure, replayable_: bool, expected: bool
) -> None:
    assert retryable(failure, replayable_) is expected


def test_every_failure_but_a_declined_write_ejects_the_sandbox() -> None:
    assert [f for f in Failure if not f.ejects] == [Failure.UNSENT]


def test_the_502_names_the_sandbox_and_why_it_was_not_retried() -> None:
    detail = not_retried("echo-7f2c", ("team-a", "echo"), Failure.RESET, "post")
    assert "echo-7f2c" in detail and "team-a/echo" in detail
    assert "died with the call in flight" in detail
    assert "POST" in detail and "may already have run" in detail and "Idempotency-Key" in detail


def test_the_hold_back_off_doubles_to_its_cap() -> None:
    waits = [next_hold_retry(None)]
    for _ in range(6):
        waits.append(next_hold_retry(waits[-1]))
    assert waits[0] == HOLD_RETRY_FIRST_SECONDS
    assert waits == sorted(waits) and waits[-1] == HOLD_RETRY_MAX_SECONDS
    assert waits[1] == 2 * waits[0]

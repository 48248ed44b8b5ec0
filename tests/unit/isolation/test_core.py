"""The pure parts of `isolation`: state machine, admission gate, contract encoding, parsing."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from isolation.base import TRANSITIONS, Admission, SandboxState, check_transition
from isolation.contract import (
    Context,
    FunctionInfo,
    Request,
    Response,
    decode_event,
    error_response,
    new_request_id,
    to_response,
)
from isolation.errors import IllegalTransition, LoadError, Overloaded
from isolation.host import (
    Suspended,
    classify_load_error,
    parse_handler,
    run_eagerly,
    start_eagerly,
)
from isolation.host import function_log as log
from tests.conformance.support import wait_for


@pytest.mark.parametrize("src", list(SandboxState))
@pytest.mark.parametrize("dst", list(SandboxState))
def test_transition_table_is_enforced(src: SandboxState, dst: SandboxState) -> None:
    if dst in TRANSITIONS[src]:
        check_transition(src, dst)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(src, dst)


def test_terminal_states_have_no_exit() -> None:
    assert TRANSITIONS[SandboxState.STOPPED] == TRANSITIONS[SandboxState.FAILED] == frozenset()


async def test_admission_is_fifo_and_bounded() -> None:
    gate = Admission(concurrency=1, queue=2)
    order: list[int] = []
    release = asyncio.Event()

    async def worker(n: int) -> None:
        async with gate:
            order.append(n)
            await release.wait()

    first = asyncio.create_task(worker(1))
    waiting = [asyncio.create_task(worker(n)) for n in (2, 3)]
    await wait_for(lambda: gate.queued == 2, what="two waiters at the gate")
    with pytest.raises(Overloaded):
        async with gate:
            pass
    release.set()
    await asyncio.gather(first, *waiting)
    assert order == [1, 2, 3]
    assert (gate.in_flight, gate.queued) == (0, 0)


async def test_admission_survives_a_cancelled_waiter() -> None:
    gate = Admission(concurrency=1, queue=1)
    async with gate:
        waiter = asyncio.create_task(gate.__aenter__())
        await wait_for(lambda: gate.queued == 1, what="a waiter at the gate")
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    async with gate:  # the slot came back
        assert gate.in_flight == 1


@pytest.mark.parametrize(
    ("body", "event"),
    [(b"", None), (b'{"a": 1}', {"a": 1}), (b"[1]", [1]), (b"\xff\x00", b"\xff\x00")],
)
def test_decode_event(body: bytes, event: object) -> None:
    assert decode_event(body) == event


@pytest.mark.parametrize(
    ("value", "status", "content_type", "body"),
    [
        ({"a": 1}, 200, "application/json", b'{"a":1}'),
        (None, 200, "application/json", b"null"),
        ("hé", 200, "text/plain; charset=utf-8", "hé".encode()),
        (b"x", 200, "application/octet-stream", b"x"),
        (Response(404, {"Content-Type": "text/html"}, "<p>"), 404, "text/html", b"<p>"),
    ],
)
def test_to_response(value: object, status: int, content_type: str, body: bytes) -> None:
    response = to_response(value)
    assert (response.status, response.headers["Content-Type"], response.body) == (
        status,
        content_type,
        body,
    )


def test_error_response_names_type_and_message() -> None:
    response = error_response(KeyError("k"))
    assert response.status == 500
    assert json.loads(response.body) == {"error": "KeyError", "message": "'k'"}


def test_context_speaks_lambda() -> None:
    info = FunctionInfo("sbx-1", "greeter", "3", 256, 10.0)
    ctx = Context(
        request=Request(),
        request_id="r1",
        deadline=time.monotonic() + 60,
        function=info,
        logger=logging.LoggerAdapter(log, {}),
    )
    assert (ctx.aws_request_id, ctx.function_name, ctx.function_version) == ("r1", "greeter", "3")
    assert ctx.memory_limit_in_mb == 256
    assert ctx.invoked_function_arn.endswith(":greeter")
    assert ctx.log_stream_name == ctx.sandbox_id == "sbx-1"
    assert ctx.log_group_name == "/nest/functions/greeter"
    assert 0 < ctx.get_remaining_time_in_millis() <= 60_000


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [("main:handler", ("main", "handler")), ("pkg.mod.fn", ("pkg.mod", "fn"))],
)
def test_parse_handler(spec: str, parsed: tuple[str, str]) -> None:
    assert parse_handler(spec) == parsed


@pytest.mark.parametrize("spec", ["handler", ":x", "mod:"])
def test_parse_handler_rejects(spec: str) -> None:
    with pytest.raises(LoadError) as caught:
        parse_handler(spec)
    assert caught.value.reason == "HandlerNotFound"


def test_classify_load_error() -> None:
    assert classify_load_error(ModuleNotFoundError("No module named 'x'"), "m:h").reason == (
        "ImportError"
    )
    assert classify_load_error(ZeroDivisionError("d"), "m:h").reason == "Error"


def test_request_ids_are_32_hex_digits_and_unique() -> None:
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


async def test_start_eagerly_finishes_what_does_not_suspend_and_resumes_what_does() -> None:
    async def immediate() -> int:
        return 1

    async def suspending() -> int:
        await asyncio.sleep(0)
        return 2

    assert start_eagerly(immediate()) == 1
    started = start_eagerly(suspending())
    assert isinstance(started, Suspended)
    assert await started.rest == 2


async def test_a_resumed_coroutine_sees_cancellation_and_cleans_up() -> None:
    cleaned = asyncio.Event()
    entered = asyncio.Event()

    async def waits() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    async def caller() -> None:
        started = start_eagerly(waits())
        assert isinstance(started, Suspended)
        await started.rest

    task = asyncio.create_task(caller())
    await wait_for(entered.is_set, what="the coroutine to suspend")  # same step as suspending
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set()


def test_run_eagerly_refuses_a_coroutine_that_suspends() -> None:
    async def suspending() -> None:
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError):
        run_eagerly(suspending())

"""One behavioural contract, two isolation backends: every test runs against both."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
from pathlib import Path

import pytest

from isolation.base import Backend, Limits, SandboxSpec, SandboxState
from isolation.contract import Request, Response
from isolation.errors import (
    LoadError,
    NotRunning,
    Overloaded,
    SandboxExists,
    SandboxNotFound,
)
from tests.conformance.conftest import Recorder
from tests.conformance.support import HELLO, HOOKS, OTHER, wait_for, write_function


def skip_if_confined(backend: Backend, why: str) -> None:
    """Some tests talk to the function through files; a confined sandbox may not read those."""
    if getattr(backend, "principals", None) is not None:
        pytest.skip(f"confined: {why} (tests/unit/isolation/test_confined.py covers it)")


def body(response: Response) -> object:
    return json.loads(response.body)


async def test_sync_handler_gets_event_and_lambda_context(backend: Backend) -> None:
    status = await backend.create(SandboxSpec("s1", HELLO, "main:handler", function_name="hi"))
    assert status.state is SandboxState.RUNNING
    assert status.pid is not None
    request = Request("GET", "/greet", {"q": "1"}, {"X-A": "b"}, b'{"name": "ada"}')
    response = await backend.invoke("s1", request)
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    got = body(response)
    assert isinstance(got, dict)
    assert got["hello"] == "ada"
    assert got["function_name"] == "hi"
    assert got["remaining_ok"] is True
    assert (got["method"], got["path"], got["query"]) == ("GET", "/greet", {"q": "1"})
    assert len(got["request_id"]) == 32


async def test_lambda_style_handler_name_is_accepted(backend: Backend) -> None:
    await backend.create(SandboxSpec("s1", HELLO, "main.echo"))
    response = await backend.invoke("s1", Request(body=b"[1, 2]"))
    assert body(response) == [1, 2]


async def test_async_handler(backend: Backend) -> None:
    await backend.create(SandboxSpec("s1", HELLO, "main:async_handler"))
    response = await backend.invoke("s1", Request(body=b'{"k": 1}'))
    assert body(response) == {"async": True, "event": {"k": 1}}


@pytest.mark.parametrize(
    ("handler", "status", "content_type", "payload"),
    [
        ("main:text", 200, "text/plain; charset=utf-8", b"plain text"),
        ("main:raw", 200, "application/octet-stream", b"\x00\x01"),
        ("main:response", 201, "application/json", b'{"created":true}'),
    ],
)
async def test_return_types(
    backend: Backend, handler: str, status: int, content_type: str, payload: bytes
) -> None:
    await backend.create(SandboxSpec("s1", HELLO, handler))
    response = await backend.invoke("s1", Request())
    assert (response.status, response.headers["Content-Type"], response.body) == (
        status,
        content_type,
        payload,
    )


async def test_non_json_body_arrives_as_bytes(backend: Backend) -> None:
    await backend.create(SandboxSpec("s1", HELLO, "main:echo"))
    response = await backend.invoke("s1", Request(body=b"not json"))
    assert (response.status, response.body) == (200, b"not json")


async def test_unserialisable_return_value_is_a_500(backend: Backend) -> None:
    await backend.create(SandboxSpec("s1", HELLO, "main:unserialisable"))
    response = await backend.invoke("s1", Request())
    assert response.status == 500
    assert body(response) == {
        "error": "TypeError",
        "message": "Object of type set is not JSON serializable",
    }


async def test_exception_becomes_500_with_type_and_message(backend: Backend) -> None:
    await backend.create(SandboxSpec("s1", HELLO, "main:handler"))
    response = await backend.invoke("s1", Request(body=b'{"raise": "boom"}'))
    assert response.status == 500
    assert body(response) == {"error": "ValueError", "message": "boom"}
    assert "Traceback" not in response.body.decode()
    assert backend.usage("s1").errors == 1
    assert (await backend.invoke("s1", Request(body=b"{}"))).status == 200  # still serving


@pytest.mark.parametrize(
    ("source", "handler", "reason", "fragment"),
    [
        ("def handler(event, context)\n    return 1\n", "main:handler", "SyntaxError", "main.py:1"),
        ("import no_such_module_xyz\n", "main:handler", "ImportError", "no_such_module_xyz"),
        (
            "def other(event, context):\n    return 1\n",
            "main:handler",
            "HandlerNotFound",
            "'handler'",
        ),
        ("raise RuntimeError('at import')\n", "main:handler", "Error", "at import"),
        ("import sys\nsys.exit(3)\n", "main:handler", "Error", "SystemExit"),
        ("x = 1\n", "nomodule:handler", "ImportError", "nomodule"),
    ],
)
async def test_broken_function_fails_create_with_a_clear_reason(
    backend: Backend,
    recorder: Recorder,
    tmp_path: Path,
    source: str,
    handler: str,
    reason: str,
    fragment: str,
) -> None:
    code_dir = write_function(tmp_path / "fn", source)
    with pytest.raises(LoadError) as caught:
        await backend.create(SandboxSpec("bad", code_dir, handler))
    assert caught.value.reason == reason
    assert fragment in caught.value.message
    status = backend.status("bad")
    assert (status.state, status.reason, status.message) == (
        SandboxState.FAILED,
        reason,
        caught.value.message,
    )
    assert recorder.states("bad") == ["Creating", "Failed"]
    with pytest.raises(NotRunning):
        await backend.invoke("bad", Request())


async def test_hook_order(backend: Backend, tmp_path: Path) -> None:
    skip_if_confined(backend, "the hooks write their trace outside the sandbox's scratch")
    spec = SandboxSpec(
        "hooked",
        HOOKS,
        "main:handler",
        env={"NEST_TRACE_DIR": str(tmp_path)},  # every backend: the sandbox's own env
        layers=("tests.conformance.tracing_layer:Outer", "tests.conformance.tracing_layer:Inner"),
    )
    await backend.create(spec)
    assert (await backend.invoke("hooked", Request())).body == b"ok"
    await backend.stop("hooked", grace_s=5.0)
    assert (tmp_path / "hooked").read_text().split() == [
        "outer:function_start",
        "inner:function_start",
        "function:function_start",
        "outer:before_invoke",
        "inner:before_invoke",
        "function:before_invoke",
        "function:handler",
        "function:after_invoke",
        "inner:after_invoke",
        "outer:after_invoke",
        "function:close",
        "inner:close",
        "outer:close",
    ]


async def test_concurrency_limit_and_queue_are_honoured(backend: Backend, tmp_path: Path) -> None:
    skip_if_confined(backend, "the gate is a file outside the sandbox's code")
    gate = tmp_path / "gate"
    gate.touch()
    limits = Limits(concurrency=2, queue=1, timeout_s=30)
    await backend.create(SandboxSpec("gated", HELLO, "main:gate", limits=limits))
    request = Request(body=json.dumps({"gate": str(gate)}).encode())
    with open(gate) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        calls = [asyncio.create_task(backend.invoke("gated", request)) for _ in range(3)]
        await wait_for(
            lambda: (backend.usage("gated").in_flight, backend.usage("gated").queued) == (2, 1),
            what="two in flight and one queued",
        )
        with pytest.raises(Overloaded):
            await backend.invoke("gated", request)
        assert not any(call.done() for call in calls)
        fcntl.flock(held, fcntl.LOCK_UN)
        responses = await asyncio.gather(*calls)
    assert [r.status for r in responses] == [200, 200, 200]
    assert backend.usage("gated").invocations == 3


async def test_stop_is_idempotent(backend: Backend, recorder: Recorder) -> None:
    await backend.create(SandboxSpec("s1", HELLO, "main:handler"))
    first = await backend.stop("s1", grace_s=2.0)
    second = await backend.stop("s1", grace_s=2.0)
    assert first.state is SandboxState.STOPPED
    assert second == first
    assert recorder.states("s1") == ["Creating", "Running", "Stopping", "Stopped"]
    with pytest.raises(NotRunning):
        await backend.invoke("s1", Request())
    await backend.remove("s1")
    await backend.remove("s1")  # removing twice is fine too
    with pytest.raises(SandboxNotFound):
        backend.status("s1")
    with pytest.raises(SandboxNotFound):
        await backend.stop("never-existed")


async def test_duplicate_id_is_rejected(backend: Backend) -> None:
    await backend.create(SandboxSpec("s1", HELLO, "main:handler"))
    with pytest.raises(SandboxExists):
        await backend.create(SandboxSpec("s1", HELLO, "main:handler"))


async def test_status_is_an_immutable_snapshot_and_usage_counts(backend: Backend) -> None:
    status = await backend.create(SandboxSpec("s1", HELLO, "main:handler"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.state = SandboxState.FAILED  # type: ignore[misc]
    for _ in range(3):
        await backend.invoke("s1", Request(body=b"{}"))
    usage = backend.usage("s1")
    assert (usage.invocations, usage.errors, usage.in_flight, usage.queued) == (3, 0, 0, 0)
    assert backend.status("s1") is not status or status.state is SandboxState.RUNNING
    assert [s.id for s in backend.list()] == ["s1"]
    assert backend.status("s1").started_at is not None


async def test_sandboxes_get_their_own_modules(backend: Backend) -> None:
    await backend.create(SandboxSpec("a", HELLO, "main:handler"))
    await backend.create(SandboxSpec("b", OTHER, "main:handler"))
    assert body(await backend.invoke("a", Request(body=b"{}")))["utils"] == "hello"  # type: ignore[index]
    assert body(await backend.invoke("b", Request(body=b"{}"))) == {"utils": "other"}


async def test_a_body_nested_too_deeply_is_refused_and_the_sandbox_lives_on(
    backend: Backend,
) -> None:
    await backend.create(SandboxSpec("deep", HELLO, "main:handler"))
    response = await backend.invoke("deep", Request(body=b"[" * 100_000 + b"]" * 100_000))
    assert response.status == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "nested too deeply" in json.loads(response.body)["detail"]
    assert backend.status("deep").state is SandboxState.RUNNING
    assert (await backend.invoke("deep", Request(body=b'{"name": "again"}'))).status == 200

"""The gateway holds every body to the runtime's limits (`sandbox.limits`) and answers problems.

The gateway is served in-process on 127.0.0.1 in front of a real runtime process (the routing
state is fed as the watches would feed it), so "the same limits at both" is tested end to end:
a body of exactly the limit reaches the sandbox through both, one byte more is the gateway's
413, and a 100,000-level nested body is a 400 that never leaves the gateway.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from gateway.app import OPTIONS_KEY, Gateway, Options, api_app, problems
from gateway.invoke import Invoker, Metrics
from gateway.kube import Kube
from gateway.main import build_parser
from gateway.routing import runtime_refusal
from nest_kube.fake import FakeApi
from sandbox import dataplane_auth as auth
from sandbox import limits
from sandbox.api import CreateSandbox
from sandbox.client import RuntimeClient
from tests.conformance.support import HELLO
from tests.unit.sandbox.conftest import RuntimeProcess, start_runtime, stop_runtime

LIMIT = limits.DEFAULT_MAX_BODY_BYTES
DEEP = b"[" * 100_000 + b"]" * 100_000
NS, NAME = "team-a", "echo"
INVOKE = f"/v1/namespaces/{NS}/functions/{NAME}:invoke"
TRIGGER = f"/fn/{NS}/{NAME}/users/1"
FUNCTION = f"/v1/namespaces/{NS}/functions/{NAME}"
JSON = {"Content-Type": "application/json"}


def json_string(size: int) -> bytes:
    """A JSON document (a string) of exactly `size` bytes."""
    return b'"' + b"a" * (size - 2) + b'"'


@dataclass
class Stack:
    gateway: TestClient[Any, Any]
    runtime: RuntimeProcess
    sandboxes: RuntimeClient

    async def invocations(self) -> int:
        usage = (await self.sandboxes.get("fn")).usage
        assert usage is not None
        return usage.invocations


Start = Callable[..., Awaitable[Stack]]


async def serve(kube: Kube, invoker: Invoker) -> TestClient[Any, Any]:
    options = Options(auth=False)
    app = api_app(Gateway(kube, invoker, None, options.limits), options)
    gateway = TestClient(TestServer(app, host="127.0.0.1"))
    await gateway.start_server()
    return gateway


@pytest.fixture
async def management() -> AsyncIterator[TestClient[Any, Any]]:
    """The gateway alone: a refused body never gets as far as the API server or a runtime."""
    kube = Kube(FakeApi())
    gateway = await serve(kube, Invoker(kube, Metrics(CollectorRegistry()), 10, 1.0))
    yield gateway
    await gateway.close()


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """Starts a runtime (flags `runtime_args`) with one sandbox and a default gateway before it."""
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def _start(isolation: str = "namespace", *runtime_args: str) -> Stack:
        where = tmp_path / f"rt{len(cleanups)}"
        where.mkdir()
        runtime = start_runtime(where, "rt", *runtime_args)
        sandboxes = RuntimeClient(runtime.socket)
        spec = CreateSandbox.model_validate(
            {"id": "fn", "code_dir": HELLO, "handler": "main:handler", "isolation": isolation}
        )
        await sandboxes.create(spec)
        kube = Kube(FakeApi())  # never called: the function is known from the "watch"
        invoker = Invoker(kube, Metrics(CollectorRegistry()), 10, 5.0,
                          auth.KeySource(where / "dataplane.key"))  # fmt: skip
        await invoker.open()
        meta = {"namespace": NS, "name": NAME, "resourceVersion": "1"}
        invoker.on_deployment("ADDED", {"metadata": meta, "spec": {"replicas": 1}})
        port = int(runtime.base_url.rsplit(":", 1)[1])
        ready = [{"podIP": "127.0.0.1", "port": port, "uid": "fn", "sandbox": "fn"}]
        invoker.on_endpoints("ADDED", {"metadata": meta, "status": {"ready": ready}})
        gateway = await serve(kube, invoker)

        async def cleanup() -> None:
            await gateway.close()
            await invoker.close()
            await sandboxes.close()
            stop_runtime(runtime)

        cleanups.append(cleanup)
        return Stack(gateway, runtime, sandboxes)

    yield _start
    for cleanup in reversed(cleanups):
        await cleanup()


async def send(
    to: Stack | TestClient[Any, Any], method: str, path: str, body: bytes
) -> tuple[int, str, bytes]:
    gateway = to.gateway if isinstance(to, Stack) else to
    async with gateway.request(method, path, data=body, headers=JSON) as r:
        return r.status, r.content_type, await r.read()


def assert_problem(answer: tuple[int, str, bytes], status: int, kind: str, instance: str) -> None:
    code, content_type, raw = answer
    assert (code, content_type) == (status, "application/problem+json"), raw[:300]
    problem = json.loads(raw)
    assert problem["type"] == limits.PROBLEM_BASE + kind
    assert (problem["status"], problem["instance"]) == (status, instance)
    assert problem["title"] and problem["detail"]


@pytest.mark.parametrize("isolation", ["namespace", "subprocess"])
async def test_invoke_and_trigger_bodies_get_the_runtimes_limits_at_the_door(
    start: Start, isolation: str
) -> None:
    stack = await start(isolation)
    status, _, raw = await send(stack, "POST", INVOKE, json_string(LIMIT))
    assert status == 200, raw[:300]  # exactly the limit passes the gateway and the runtime
    too_large = await send(stack, "POST", INVOKE, json_string(LIMIT + 1))
    assert_problem(too_large, 413, "payload-too-large", INVOKE)
    assert_problem(await send(stack, "POST", INVOKE, DEEP), 400, "json-too-deep", INVOKE)
    assert_problem(await send(stack, "PUT", TRIGGER, DEEP), 400, "json-too-deep", TRIGGER)
    too_large = await send(stack, "POST", TRIGGER, json_string(LIMIT + 1))
    assert_problem(too_large, 413, "payload-too-large", TRIGGER)
    assert await stack.invocations() == 1  # the refusals never left the gateway
    status, _, raw = await send(stack, "POST", INVOKE, b'{"name": "after"}')
    assert status == 200 and json.loads(raw)["hello"] == "after"
    info = await stack.sandboxes.get("fn")
    assert info.state == "Running"


async def test_a_runtime_with_smaller_limits_answers_the_same_problems_through_the_gateway(
    start: Start,
) -> None:
    stack = await start("namespace", "--max-body-bytes", "1Ki", "--max-json-depth", "8")
    runtime_path = "/v1/sandboxes/fn/invoke"
    answer = await send(stack, "POST", INVOKE, json_string(1025))
    assert_problem(answer, 413, "payload-too-large", runtime_path)
    answer = await send(stack, "POST", INVOKE, b"[" * 9 + b"]" * 9)
    assert_problem(answer, 400, "json-too-deep", runtime_path)
    assert (await send(stack, "POST", INVOKE, b"[" * 8 + b"]" * 8))[0] == 200


BODY_OPERATIONS = [
    ("POST", f"/v1/namespaces/{NS}/functions"),
    ("PUT", FUNCTION),
    ("PUT", FUNCTION + "/scale"),
    ("POST", FUNCTION + "/rollout:undo"),
]


@pytest.mark.parametrize(("method", "path"), BODY_OPERATIONS)
async def test_management_bodies_too_deep_invalid_or_large_are_4xx_never_500(
    management: TestClient[Any, Any], method: str, path: str
) -> None:
    for body in (DEEP, b'{"replicas": ' + b"[" * 100_000, b'{"a": ' * 600 + b"1" + b"}" * 600):
        assert_problem(await send(management, method, path, body), 400, "json-too-deep", path)
    assert_problem(await send(management, method, path, b"{x"), 400, "invalid-json", path)
    too_large = b"{" + b" " * (LIMIT - 1) + b"}"
    assert_problem(await send(management, method, path, too_large), 413, "payload-too-large", path)
    unknown = b'{"unknownField": 1'  # refused by every model (unknown fields are)
    at_limit = unknown + b" " * (LIMIT - len(unknown) - 1) + b"}"
    status, content_type, _ = await send(management, method, path, at_limit)
    assert (status, content_type) == (422, "application/problem+json")  # past the limits


async def test_aiohttps_own_413_is_a_problem_document_too() -> None:
    async def plain_read(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    small = limits.BodyLimits(max_bytes=10, max_depth=4)
    app = web.Application(middlewares=[problems], client_max_size=small.max_bytes)
    app[OPTIONS_KEY] = Options(limits=small)
    app.router.add_post("/x", plain_read)
    async with TestClient(TestServer(app, host="127.0.0.1")) as http:
        async with http.post("/x", data=b"y" * 10) as r:
            assert r.status == 200
        async with http.post("/x", data=b"y" * 11) as r:
            assert (r.status, r.content_type) == (413, "application/problem+json")
            problem = await r.json()
    assert problem["type"] == limits.PROBLEM_BASE + "payload-too-large"
    assert "10 bytes" in problem["detail"]


def test_a_functions_own_deeply_nested_404_is_passed_on_not_parsed_into_a_500() -> None:
    assert runtime_refusal(404, b'{"error": ' + b"[" * 100_000) is None
    assert runtime_refusal(404, b'{"error": "NotFound", "message": "gone"}') == "NotFound"


def test_the_gateway_takes_the_runtimes_limit_flags() -> None:
    assert limits.from_args(build_parser({}).parse_args([])) == limits.DEFAULT_LIMITS
    env = {limits.ENV_MAX_BODY_BYTES: "1Mi", limits.ENV_MAX_JSON_DEPTH: "64"}
    assert limits.from_args(build_parser(env).parse_args([])) == limits.BodyLimits(1 << 20, 64)
    args = build_parser(env).parse_args(["--max-body-bytes", "10", "--max-json-depth", "2"])
    assert limits.from_args(args) == limits.BodyLimits(10, 2)

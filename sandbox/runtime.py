"""The runtime daemon: one per pool pod; `python -m sandbox.runtime` or `nest-runtime`.

Why: the sidecar (our kubelet) needs a CRI-like runtime to hot-plug sandboxes into its pod, and
the gateway needs a data plane to invoke them. This module is only the thin I/O shell — flags
and env, the control API on a unix socket, the data plane on TCP, signal handling — around
`sandbox.service.Runtime`, where the decisions live.

Control API (unix socket, JSON, models in `sandbox.api`):
    GET    /v1/runtime                      RuntimeInfo
    POST   /v1/sandboxes                    CreateSandbox -> 201 SandboxInfo | 409 | 422
    GET    /v1/sandboxes                    SandboxList (with usage)
    GET    /v1/sandboxes/{id}               SandboxInfo | 404
    POST   /v1/sandboxes/{id}/stop          StopSandbox -> SandboxInfo
    DELETE /v1/sandboxes/{id}?grace_seconds=N
    GET    /v1/events                       NDJSON stream of SandboxEvent
Data plane (TCP):
    POST   /v1/sandboxes/{id}/invoke        body = event
    ANY    /v1/sandboxes/{id}/http/{path}   HTTP trigger: method, path, query, headers pass through
    GET    /healthz, /metrics
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import stat
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web
from pydantic import BaseModel, ValidationError

from isolation.contract import Request
from isolation.errors import IsolationError, LoadError
from sandbox.api import (
    CreateSandbox,
    ErrorBody,
    RuntimeInfo,
    SandboxInfo,
    SandboxList,
    StopSandbox,
)
from sandbox.errors import http_error
from sandbox.service import Runtime

log = logging.getLogger("nest.runtime")
JSON = "application/json"
RUNTIME_KEY = web.AppKey("runtime", Runtime)
ADDRESS_KEY = web.AppKey("address", list)


@dataclass(frozen=True, slots=True)
class Config:
    socket: str
    host: str
    port: int
    preload: tuple[str, ...]
    layers: tuple[str, ...]
    log_level: str


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def parse_config(argv: Sequence[str] | None, env: Mapping[str, str]) -> Config:
    """Flags win over env; env wins over defaults. Pure, so it is tested without a process."""
    parser = argparse.ArgumentParser(
        prog="nest-runtime",
        description="Nest sandbox runtime: hosts function sandboxes in one pool pod.",
    )
    parser.add_argument(
        "--socket",
        default=env.get("NEST_RUNTIME_SOCKET", "/tmp/nest-runtime.sock"),
        help="control API unix socket (env NEST_RUNTIME_SOCKET)",
    )
    parser.add_argument(
        "--host",
        default=env.get("NEST_RUNTIME_HOST") or env.get("POD_IP") or "127.0.0.1",
        help="data-plane address (env NEST_RUNTIME_HOST, else $POD_IP, else 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env.get("NEST_RUNTIME_PORT", "8080")),
        help="data-plane port, 0 picks a free one (env NEST_RUNTIME_PORT)",
    )
    parser.add_argument(
        "--preload",
        default=env.get("NEST_RUNTIME_PRELOAD", ""),
        help="comma-separated modules the zygote imports before forking (NEST_RUNTIME_PRELOAD)",
    )
    parser.add_argument(
        "--layer",
        action="append",
        default=None,
        help="runtime-level hook object 'module:attr', repeatable (env NEST_RUNTIME_LAYERS)",
    )
    parser.add_argument("--log-level", default=env.get("NEST_RUNTIME_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    layers = tuple(args.layer) if args.layer else _split(env.get("NEST_RUNTIME_LAYERS", ""))
    return Config(args.socket, args.host, args.port, _split(args.preload), layers, args.log_level)


def _error(
    status: int, error: str, message: str, sandbox: SandboxInfo | None = None
) -> web.Response:
    body = ErrorBody(error=error, message=message, sandbox=sandbox)
    return web.Response(status=status, text=body.model_dump_json(), content_type=JSON)


@web.middleware
async def isolation_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except IsolationError as exc:
        status, word, message = http_error(exc)
        return _error(status, word, message)
    except ValidationError as exc:
        return _error(400, "InvalidRequest", str(exc))


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(status=status, text=model.model_dump_json(), content_type=JSON)


# ---- control API ---------------------------------------------------------------------------


async def runtime_info(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    host, port = request.app[ADDRESS_KEY]
    return _json(RuntimeInfo(data_host=host, data_port=port, **runtime.info()))


async def create_sandbox(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    body = CreateSandbox.model_validate_json(await request.read())
    try:
        info = await runtime.create(body)
    except LoadError as exc:
        return _error(422, exc.reason, exc.message, sandbox=runtime.get(body.id))
    return _json(info, status=201)


async def list_sandboxes(request: web.Request) -> web.Response:
    return _json(SandboxList(items=request.app[RUNTIME_KEY].list()))


async def get_sandbox(request: web.Request) -> web.Response:
    return _json(request.app[RUNTIME_KEY].get(request.match_info["id"]))


async def stop_sandbox(request: web.Request) -> web.Response:
    raw = await request.read()
    body = StopSandbox.model_validate_json(raw) if raw else StopSandbox()
    info = await request.app[RUNTIME_KEY].stop(request.match_info["id"], body.grace_seconds)
    return _json(info)


async def delete_sandbox(request: web.Request) -> web.Response:
    grace = StopSandbox.model_validate(dict(request.query.items()))
    await request.app[RUNTIME_KEY].remove(request.match_info["id"], grace.grace_seconds)
    return web.Response(status=204)


async def watch_events(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    async with runtime.events.subscribe() as queue:
        await response.prepare(request)  # headers after subscribing: the client may now relist
        while (event := await queue.get()) is not None:
            await response.write(event.model_dump_json().encode() + b"\n")
    return response


def control_app(runtime: Runtime, address: list[object]) -> web.Application:
    app = web.Application(middlewares=[isolation_errors])
    app[RUNTIME_KEY] = runtime
    app[ADDRESS_KEY] = address
    app.router.add_get("/v1/runtime", runtime_info)
    app.router.add_post("/v1/sandboxes", create_sandbox)
    app.router.add_get("/v1/sandboxes", list_sandboxes)
    app.router.add_get("/v1/sandboxes/{id}", get_sandbox)
    app.router.add_post("/v1/sandboxes/{id}/stop", stop_sandbox)
    app.router.add_delete("/v1/sandboxes/{id}", delete_sandbox)
    app.router.add_get("/v1/events", watch_events)
    return app


# ---- data plane ----------------------------------------------------------------------------


async def _invoke(request: web.Request, path: str) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    # aiohttp's read-only multidict views are Mappings already (case-insensitive headers, even):
    # copying them into dicts would cost more than the rest of the runtime's work per call.
    call = Request(request.method, path, request.query, request.headers, await request.read())
    try:
        response = await runtime.invoke(request.match_info["id"], call)
    except IsolationError as exc:
        status, word, message = http_error(exc)
        return _error(status, word, message)
    return web.Response(status=response.status, headers=response.headers, body=response.body)


async def invoke(request: web.Request) -> web.Response:
    return await _invoke(request, "/")


async def http_trigger(request: web.Request) -> web.Response:
    return await _invoke(request, "/" + request.match_info["path"])


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    return web.Response(
        body=runtime.metrics.exposition(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


def data_app(runtime: Runtime) -> web.Application:
    # No middleware on the hot path: aiohttp rebuilds the handler chain for every request.
    app = web.Application()
    app[RUNTIME_KEY] = runtime
    app.router.add_post("/v1/sandboxes/{id}/invoke", invoke)
    app.router.add_route("*", "/v1/sandboxes/{id}/http/{path:.*}", http_trigger)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


# ---- process -------------------------------------------------------------------------------


def _remove_stale_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # left by a runtime that died; nothing listens on it any more


async def serve(config: Config, stop: asyncio.Event) -> None:
    runtime = Runtime(preload=config.preload, layers=config.layers)
    await runtime.start()
    address: list[object] = [config.host, config.port]
    data = web.AppRunner(data_app(runtime), access_log=None)
    control = web.AppRunner(control_app(runtime, address), access_log=None)
    await data.setup()
    await control.setup()
    try:
        await web.TCPSite(data, config.host, config.port).start()
        address[1] = data.addresses[0][1]
        _remove_stale_socket(config.socket)
        await web.UnixSite(control, config.socket).start()
        log.info(
            "runtime ready: control %s, data http://%s:%s", config.socket, config.host, address[1]
        )
        print(json.dumps({"ready": True, "data_port": address[1]}), flush=True)
        await stop.wait()
    finally:
        await runtime.close()
        await control.cleanup()
        await data.cleanup()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(config.socket)


async def _main(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(config, stop)


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(argv, os.environ)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(_main(config))


if __name__ == "__main__":
    main()

"""The runtime daemon: one per pool pod; `python -m sandbox.runtime` or `nest-runtime`.

Why: the sidecar (our kubelet) needs a CRI-like runtime to hot-plug sandboxes into its pod, and
the gateway needs a data plane to invoke them. This module is only the thin I/O shell — flags
and env, the control API on a unix socket, the data plane on TCP (`sandbox.dataplane`), signal
handling — around `sandbox.service.Runtime`, where the decisions live.

Control API (unix socket, JSON, models in `sandbox.api`):
    GET    /v1/runtime                      RuntimeInfo (+ last_crash: who crashed the last runtime)
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
    (an answer the function streams goes out chunked, chunk by chunk: isolation.streams)
Bodies of both are held to `sandbox.limits` (--max-body-bytes, --max-json-depth: the gateway's
flags): the data plane answers 413/400 problem+json, the control API 413/400 ErrorBody.

Who may call what: the control socket is created 0600 in a 0700 directory, so only the runtime's
own user (the sidecar runs as it, sandboxes never do) can connect. The data plane answers only
requests signed with the data-plane key (`sandbox.dataplane_auth`: the gateway and the operator
sign; 401 otherwise), except /healthz, which probes need. Without a key the runtime refuses to
start; `--insecure-dataplane` serves unsigned requests for local benchmarks and tests, loudly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web
from pydantic import BaseModel, ValidationError

from isolation.boundary import BoundaryConfig, parse_uid_range
from isolation.errors import IsolationError, LoadError
from sandbox import dataplane_auth as auth
from sandbox import limits
from sandbox.api import (
    CreateSandbox,
    RuntimeInfo,
    SandboxList,
    StopSandbox,
)
from sandbox.dataplane import JSON, LIMITS_KEY, RUNTIME_KEY, data_app
from sandbox.dataplane import error_response as _error
from sandbox.errors import http_error
from sandbox.limits import DEFAULT_LIMITS, BodyLimits
from sandbox.service import Runtime

log = logging.getLogger("nest.runtime")
ADDRESS_KEY = web.AppKey("address", list)
DRAIN_POLL = 0.5  # seconds between looks at whether a draining runtime still hosts sandboxes


@dataclass(frozen=True, slots=True)
class Config:
    socket: str
    host: str
    port: int
    preload: tuple[str, ...]
    layers: tuple[str, ...]
    log_level: str
    boundary: BoundaryConfig | None = None  # None: subprocess sandboxes run unconfined
    dataplane_keys: str | None = None  # a key file or directory; None only when insecure
    insecure_dataplane: bool = False
    limits: BodyLimits = DEFAULT_LIMITS
    state_dir: str | None = None  # the crash record's directory; None: beside the socket
    # After SIGTERM, how long it keeps serving while it hosts sandboxes (its pool pod is being
    # deleted, and the sidecar removes each once it was replaced elsewhere); 0: stop at once.
    drain_seconds: float = 0.0


def state_dir_for(socket_path: str) -> str:
    """The default state directory: beside the control socket (`runtime.sock` ->
    `runtime.state`), so one runtime per socket has one record, and in a pod it sits in the
    same emptyDir, which outlives a crash of the runtime's container."""
    return os.path.splitext(os.path.abspath(socket_path))[0] + ".state"


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
    parser.add_argument(
        "--sandbox-uids",
        type=parse_uid_range,
        default=env.get("NEST_SANDBOX_UIDS", "200000-299999"),
        help="uids (and gids) given out, one per subprocess sandbox, FIRST-LAST "
        "(env NEST_SANDBOX_UIDS, default %(default)s)",
    )
    parser.add_argument(
        "--scratch-dir",
        default=env.get("NEST_SCRATCH_DIR", "/tmp/nest-scratch"),
        help="where each subprocess sandbox gets its private writable directory "
        "(env NEST_SCRATCH_DIR, default %(default)s)",
    )
    parser.add_argument(
        "--unconfined",
        action="store_true",
        default=env.get("NEST_UNCONFINED", "") == "1",
        help="run subprocess sandboxes as the runtime's own user with no seccomp, Landlock or "
        "limits: for development only, never for several tenants (env NEST_UNCONFINED=1)",
    )
    parser.add_argument(
        "--dataplane-key-file",
        default=env.get(auth.ENV_KEY_FILE) or None,
        help="data-plane signing key: a file, or a directory of keys (a Secret volume; every "
        f"key verifies, '{auth.SIGNING_NAME}' signs) (env {auth.ENV_KEY_FILE})",
    )
    parser.add_argument(
        "--insecure-dataplane",
        action="store_true",
        default=env.get("NEST_DATAPLANE_INSECURE", "") == "1",
        help="serve unsigned data-plane requests: local benchmarks and tests only "
        "(env NEST_DATAPLANE_INSECURE=1)",
    )
    parser.add_argument(
        "--state-dir",
        default=env.get("NEST_RUNTIME_STATE_DIR") or None,
        help="where the runtime records which namespace sandbox runs code, so the next runtime "
        "can name the one that crashed it (env NEST_RUNTIME_STATE_DIR; default: beside the "
        "socket, <socket without .sock>.state)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=float(env.get("NEST_DRAIN_SECONDS") or 0),
        help="after SIGTERM, the longest it keeps serving while it hosts sandboxes (env "
        "NEST_DRAIN_SECONDS; a little less than the pod's terminationGracePeriodSeconds)",
    )
    limits.add_flags(parser, env)
    args = parser.parse_args(argv)
    if not args.dataplane_key_file and not args.insecure_dataplane:
        parser.error(
            f"no data-plane key: pass --dataplane-key-file (env {auth.ENV_KEY_FILE}), or "
            "--insecure-dataplane to let anyone who reaches the port invoke any sandbox"
        )
    layers = tuple(args.layer) if args.layer else _split(env.get("NEST_RUNTIME_LAYERS", ""))
    boundary = None
    if not args.unconfined:
        boundary = BoundaryConfig(uids=args.sandbox_uids, scratch_root=args.scratch_dir)
    return Config(
        args.socket, args.host, args.port, _split(args.preload), layers, args.log_level, boundary,
        args.dataplane_key_file, args.insecure_dataplane, limits.from_args(args),
        args.state_dir or state_dir_for(args.socket), max(0.0, args.drain_seconds),
    )  # fmt: skip


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
    except limits.BodyRefused as exc:
        word = "PayloadTooLarge" if exc.status == 413 else "InvalidRequest"
        return _error(exc.status, word, exc.detail)


async def _control_body(request: web.Request) -> bytes:
    """The body of a control call, held to the same limits as the data plane's."""
    body_limits = request.app[LIMITS_KEY]
    raw = await limits.read_body(request, body_limits)
    limits.check_body(raw, body_limits)
    return raw


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(status=status, text=model.model_dump_json(), content_type=JSON)


# ---- control API ---------------------------------------------------------------------------


async def runtime_info(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    host, port = request.app[ADDRESS_KEY]
    return _json(RuntimeInfo(data_host=host, data_port=port, **runtime.info()))


async def create_sandbox(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    body = CreateSandbox.model_validate_json(await _control_body(request))
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
    raw = await _control_body(request)
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


def control_app(
    runtime: Runtime, address: list[object], body_limits: BodyLimits = DEFAULT_LIMITS
) -> web.Application:
    app = web.Application(middlewares=[isolation_errors], client_max_size=body_limits.max_bytes)
    app[RUNTIME_KEY] = runtime
    app[LIMITS_KEY] = body_limits
    app[ADDRESS_KEY] = address
    app.router.add_get("/v1/runtime", runtime_info)
    app.router.add_post("/v1/sandboxes", create_sandbox)
    app.router.add_get("/v1/sandboxes", list_sandboxes)
    app.router.add_get("/v1/sandboxes/{id}", get_sandbox)
    app.router.add_post("/v1/sandboxes/{id}/stop", stop_sandbox)
    app.router.add_delete("/v1/sandboxes/{id}", delete_sandbox)
    app.router.add_get("/v1/events", watch_events)
    return app


# ---- process -------------------------------------------------------------------------------


def _remove_stale_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # left by a runtime that died; nothing listens on it any more


def bind_private_socket(path: str) -> socket.socket:
    """A unix socket only this process's user can connect to: 0600, in a 0700 directory.

    The umask is set while binding, so the socket never exists with a wider mode, and the chmod
    states the mode rather than trusting it. A shared sticky directory (/tmp) is left alone:
    there the socket's own mode is the guard. No other thread of ours creates files while this
    runs: it is called before any sandbox exists.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    info = os.stat(directory)
    if info.st_uid == os.geteuid() and not info.st_mode & stat.S_ISVTX:
        os.chmod(directory, 0o700)  # an emptyDir is created 0777
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)
    return sock


def load_keys(config: Config) -> auth.KeySource | None:
    """The data-plane keys, or None (and a loud warning) when insecure; raises
    DataplaneKeyError when a key was named but cannot be used."""
    if config.dataplane_keys:
        keys = auth.KeySource(config.dataplane_keys)
        log.info("data plane requires signatures (keys: %s)", ", ".join(keys.ring.names))
        return keys
    log.warning(
        "INSECURE DATA PLANE (--insecure-dataplane): anyone who can reach %s:%s can invoke "
        "any sandbox and read /metrics; for local benchmarks and tests only",
        config.host, config.port,
    )  # fmt: skip
    return None


async def drained(
    runtime: Runtime, term: asyncio.Event, stop: asyncio.Event, seconds: float
) -> None:
    """Set `stop` once `term` (SIGTERM) is set and the runtime hosts no sandbox (the sidecar
    removed each after its replacement elsewhere took over), or `seconds` after `term`: a pool
    pod being deleted keeps answering while its sandboxes are moved."""
    await term.wait()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    if runtime.list():
        log.info("SIGTERM: serving %d sandboxes for at most %.0fs", len(runtime.list()), seconds)
    while runtime.list() and loop.time() < deadline:
        await asyncio.sleep(DRAIN_POLL)  # a poll of our own state, bounded by the deadline
    stop.set()


async def serve(config: Config, stop: asyncio.Event, term: asyncio.Event | None = None) -> None:
    """Run until `stop`; with `term`, until it and a drain (`drained`) are over."""
    keys = load_keys(config)  # before anything starts: no key, no runtime
    if config.boundary is None:
        log.warning("subprocess sandboxes are NOT confined (--unconfined): one tenant only")
    runtime = Runtime(
        preload=config.preload, layers=config.layers, boundary=config.boundary,
        state_dir=config.state_dir,
    )  # fmt: skip
    await runtime.start()
    address: list[object] = [config.host, config.port]
    data = web.AppRunner(data_app(runtime, keys, config.limits), access_log=None)
    control = web.AppRunner(control_app(runtime, address, config.limits), access_log=None)
    await data.setup()
    await control.setup()
    bound = False
    try:
        await web.TCPSite(data, config.host, config.port).start()
        address[1] = data.addresses[0][1]
        sock = bind_private_socket(config.socket)
        bound = True
        await web.SockSite(control, sock).start()
        log.info(
            "runtime ready: control %s, data http://%s:%s", config.socket, config.host, address[1]
        )
        print(json.dumps({"ready": True, "data_port": address[1]}), flush=True)
        if term is not None:
            drain = asyncio.ensure_future(drained(runtime, term, stop, config.drain_seconds))
        await stop.wait()
        if term is not None:
            drain.cancel()
    finally:
        await runtime.close()
        await control.cleanup()
        await data.cleanup()
        if bound:  # never the socket of another runtime that still owns the port we could not get
            with contextlib.suppress(FileNotFoundError):
                os.unlink(config.socket)


async def _main(config: Config) -> None:
    stop, term = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def signalled() -> None:  # the first signal drains, a second one stops at once
        (stop if term.is_set() else term).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled)
    await serve(config, stop, term)


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(argv, os.environ)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        asyncio.run(_main(config))
    except auth.DataplaneKeyError as exc:
        sys.exit(f"nest-runtime: {exc}")


if __name__ == "__main__":
    main()

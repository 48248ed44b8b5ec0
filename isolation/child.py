"""What a forked sandbox process runs: load the function, say ready, serve invocations.

Why a module of its own: it is imported into the zygote before `gc.freeze()`, so every
sandbox process starts with this code already loaded and shared copy-on-write. The process is
dedicated to one function, so plain `import` is the right loader here (the function's modules
have their real names); env and working directory are applied before load.

Two ways to serve, because an event loop is the largest thing a sandbox would otherwise build
for itself (about 1 MB of private memory per process, plus a loop iteration per request):
* blocking — a sync handler with concurrency 1: read a frame, call the handler, write the
  result, on a plain blocking socket. Async hooks still work: the first one to return an
  awaitable creates an event loop, which then runs each awaitable to completion in place.
* asyncio — an async handler or an ASGI app (never blocking: its lifespan and its requests
  share one loop), or concurrency > 1 (sync handlers then run on threads).

Channel: the socket inherited from the zygote, speaking `isolation.ipc` frames.
    child -> runtime   {"t": "ready"} | {"t": "failed", "reason", "message"}
                       | {"t": "result", "id", "status", "headers"} + body
                       | a streamed answer: {"t": "start", "id", "status", "headers"},
                         {"t": "chunk", "id"} + chunk ..., {"t": "end", "id"[, "error"]}
    runtime -> child   {"t": "invoke", "id", "rid", "method", "path", "raw_path", "query"
                       (raw), "headers" (every pair, in order), "root_path", "client",
                       "deadline"} + body | {"t": "cancel", "id"} (end that stream)
                       | {"t": "stop"}
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import select
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, BinaryIO
from urllib.parse import parse_qsl

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from isolation import codecache, confine
from isolation.boundary import Confinement
from isolation.confine import ConfinementError
from isolation.contract import FunctionInfo, Request, Response
from isolation.errors import LoadError
from isolation.host import (
    BlockOn,
    FunctionHost,
    awaits,
    classify_load_error,
    load_layers,
    parse_handler,
    run_eagerly,
)
from isolation.ipc import (
    _PREFIX,
    MAX_BODY,
    FrameParser,
    encode_frame,
    encode_headers,
    read_frame,
    read_frame_blocking,
)
from isolation.streams import Streamed

READY = encode_frame({"t": "ready"})
# What a confined sandbox keeps of the runtime's environment (the rest is its pod's business).
INHERITED_ENV = frozenset({"PATH", "LANG", "LC_ALL", "PYTHONUNBUFFERED", "PYTHONHASHSEED", "TZ"})
STOP = encode_frame({"t": "stop"})
MAX_SPEC = MAX_BODY  # the spec comes from the runtime: a sanity bound, not a defence


def main(fd: int) -> int:
    """Runs in the forked child; returns the process exit code."""
    confine.die_with_parent()
    sock = socket.socket(fileno=fd)
    spec = read_spec(sock)
    if spec is None:
        return 1  # the runtime went away before it sent the spec
    try:
        raw = spec.get("confine")
        confinement = Confinement.from_json(raw) if raw else None
        if confinement is not None:
            _enter(confinement, spec["env"])
        else:
            os.environ.update(spec["env"])
        os.chdir(spec["workdir"] or spec["code_dir"])
        # Its own code first, then its dependency layers in order, then the interpreter's.
        sys.path[0:0] = [spec["code_dir"], *spec.get("dependency_paths", ())]
        codecache.install(spec["code_dir"])  # its modules, as the zygote loaded them
        host = _load(spec)
    except ConfinementError as exc:
        sock.sendall(_failed(LoadError("Error", f"sandbox boundary: {exc}")))
        return 1
    except (Exception, SystemExit) as exc:
        err = classify_load_error(exc, spec["handler"])
        sock.sendall(_failed(err))
        return 1
    if not host.has_start_hooks:
        # Nothing left to run before serving: say ready now, while whatever serving still needs
        # to build is built (requests wait in the socket buffer meanwhile).
        sock.sendall(READY)
    if _blocks(spec, host):
        return _serve_blocking(sock, host)
    return asyncio.run(_serve(sock, host))


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    # Exactly the first frame and nothing past it: what follows is read as frames later.
    data = sock.recv(size, socket.MSG_WAITALL) if size else b""
    return data if len(data) == size else None


def spec_frame(spec: dict[str, Any]) -> bytes:
    """The first frame on a sandbox's channel: its spec, written by the runtime (`read_spec`)."""
    return encode_frame({"t": "spec", "spec": spec})


def read_spec(sock: socket.socket) -> dict[str, Any] | None:
    """The sandbox's spec: the first frame the runtime writes on the channel (a "spec" frame)."""
    prefix = _recv_exactly(sock, _PREFIX.size)
    if prefix is None:
        return None
    header_length, body_length = _PREFIX.unpack(prefix)
    if header_length > MAX_SPEC or body_length:
        return None
    raw = _recv_exactly(sock, header_length)
    if raw is None:
        return None
    header = json.loads(raw)
    spec = header.get("spec") if isinstance(header, dict) else None
    return spec if header.get("t") == "spec" and isinstance(spec, dict) else None


def _enter(confinement: Confinement, env: dict[str, str]) -> None:
    """Become the sandbox's own principal (see `isolation.confine` for the order and why)."""
    try:
        confine.become_subreaper()
        confine.join_cgroup(confinement)
        confine.set_limits(confinement)
    except OSError as exc:
        raise ConfinementError(f"setting limits: {exc}") from None
    # The zygote kept only INHERITED_ENV of the runtime's environment (`reset_environment`).
    os.environ.update(env | {"TMPDIR": confinement.scratch, "HOME": confinement.scratch})
    tempfile.tempdir = None  # the zygote may have cached its own choice
    confine.apply(confinement, confine.PROGRAM)
    sys.dont_write_bytecode = True


def reset_environment() -> None:
    """Keep only INHERITED_ENV of this process's environment (the zygote of confined ones)."""
    for key in [k for k in os.environ if k not in INHERITED_ENV]:
        del os.environ[key]


def _failed(err: LoadError) -> bytes:
    return encode_frame({"t": "failed", "reason": err.reason, "message": err.message})


def _blocks(spec: dict[str, Any], host: FunctionHost) -> bool:
    return spec["concurrency"] <= 1 and not host.handler_is_async


class _LazyLoop:
    """An event loop made on first need, for the awaitables a blocking sandbox meets."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def block_on(self, awaitable: Awaitable[Any]) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)


def _make_run_sync(concurrency: int) -> Callable[[Callable[[], Any]], Any]:
    if concurrency <= 1:
        # One invocation at a time: run sync handlers inline; a thread hop would only add latency.
        async def inline(fn: Callable[[], Any]) -> Any:
            return fn()

        return inline
    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="nest-fn")

    async def threaded(fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    return threaded


def _load(spec: dict[str, Any]) -> FunctionHost:
    info = FunctionInfo(
        sandbox_id=spec["id"],
        function_name=spec["function_name"],
        function_version=spec["function_version"],
        memory_limit_in_mb=spec["memory_limit_in_mb"],
        timeout_s=spec["timeout_s"],
    )
    module_name, attr = parse_handler(spec["handler"])
    module = importlib.import_module(module_name)
    layers = load_layers(spec["layers"])
    concurrency = spec["concurrency"]
    interface = spec.get("interface", "nest")
    block_on: BlockOn | None = None
    if concurrency <= 1 and not awaits(getattr(module, attr, None), interface):
        # Served blocking (see _blocks): awaitables a sync handler or hook returns run here.
        block_on = _LazyLoop().block_on
    return FunctionHost(
        info, module, attr, layers, _make_run_sync(concurrency), block_on, interface
    )


def _request(header: dict[str, Any], body: bytes) -> Request:
    """The request as the runtime's data plane saw it, rebuilt into the same multidicts the
    namespace backend gets (first value per name, case-insensitive headers, repeats kept)."""
    headers = CIMultiDictProxy(CIMultiDict(header["headers"]))
    raw_query = header["query"]
    query = MultiDictProxy(MultiDict(parse_qsl(raw_query, keep_blank_values=True)))
    return Request(
        header["method"], header["path"], query, headers, body, raw_query, headers.items(),
        header["root_path"], header["client"], header["raw_path"],
    )  # fmt: skip


def _result(header: dict[str, Any], response: Response) -> bytes:
    out = {"t": "result", "id": header["id"], "status": response.status}
    out["headers"] = encode_headers(response.headers)
    return encode_frame(out, response.body)


def _serve_blocking(sock: socket.socket, host: FunctionHost) -> int:
    if host.has_start_hooks:
        try:
            run_eagerly(host.start())
        except LoadError as err:
            sock.sendall(_failed(err))
            return 1
        sock.sendall(READY)
    stream = sock.makefile("rb")
    while (frame := read_frame_blocking(stream)) is not None:
        header, body = frame
        if header["t"] != "invoke":
            if header["t"] == "stop":
                break
            continue  # a cancel for a stream already over
        response = run_eagerly(
            host.invoke(_request(header, body), header["rid"], header["deadline"])
        )
        if type(response.body) is Streamed:
            if not _stream_blocking(sock, stream, header["id"], response, host):
                break
            continue
        sock.sendall(_result(header, response))
    run_eagerly(host.close())
    return 0


def _start(rid: int, response: Response) -> bytes:
    headers = encode_headers(response.headers)
    return encode_frame({"t": "start", "id": rid, "status": response.status, "headers": headers})


def _end(rid: int, error: str | None) -> bytes:
    return encode_frame({"t": "end", "id": rid} | ({"error": error} if error else {}))


def _stream_blocking(
    sock: socket.socket, reader: BinaryIO, rid: int, response: Response, host: FunctionHost
) -> bool:
    """Send a streamed answer chunk by chunk (a full socket blocks us: the runtime's reader
    paces the function). Between chunks a cancel from the runtime ends it, a stop ends it and
    serving; False then. Nothing else can arrive meanwhile: the stream holds the one slot."""
    sock.sendall(_start(rid, response))
    chunks = host.chunks_blocking(response.body)
    serving, error = True, None
    try:
        for chunk in chunks:
            sock.sendall(encode_frame({"t": "chunk", "id": rid}, chunk))
            if select.select([sock], [], [], 0)[0]:
                frame = read_frame_blocking(reader)
                if frame is None or frame[0]["t"] == "stop":
                    serving = False
                    break
                if frame[0]["t"] == "cancel":
                    break
    except Exception as exc:  # the function's own error ends its stream, not the sandbox
        host.logger.exception("stream %s failed", rid)
        error = f"{type(exc).__name__}: {exc}"
    finally:
        chunks.close()
    sock.sendall(_end(rid, error))
    return serving


class _Channel(asyncio.Protocol):
    """The asyncio end of the channel: frames are parsed as they arrive, one task per invoke."""

    def __init__(self, host: FunctionHost, done: asyncio.Future[None]) -> None:
        self._host = host
        self._done = done
        self._parser = FrameParser()
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: dict[int, asyncio.Task[None]] = {}  # streamed answers being sent
        self._writable = asyncio.Event()  # the socket takes more (the runtime reads on)
        self._writable.set()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for header, body in self._parser.feed(data):
            kind = header["t"]
            if kind == "invoke":
                task = asyncio.create_task(self._invoke(header, body))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif kind == "cancel":
                streaming = self._streams.get(header["id"])
                if streaming is not None:
                    streaming.cancel()
            elif kind == "stop":
                self.connection_lost(None)
                return

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_result(None)

    async def _invoke(self, header: dict[str, Any], body: bytes) -> None:
        response = await self._host.invoke(
            _request(header, body), header["rid"], header["deadline"]
        )
        assert self.transport is not None
        if type(response.body) is Streamed:
            await self._stream(header["id"], response)
            return
        self.transport.write(_result(header, response))

    async def _stream(self, rid: int, response: Response) -> None:
        """Send a streamed answer as its chunks come, paced by the socket; a cancel from the
        runtime (its caller left, or a bound ran out) cancels this task and closes it."""
        assert self.transport is not None
        current = asyncio.current_task()
        assert current is not None
        self._streams[rid] = current
        self.transport.write(_start(rid, response))
        chunks = self._host.chunks(response.body)
        error = None
        try:
            async for chunk in chunks:
                self.transport.write(encode_frame({"t": "chunk", "id": rid}, chunk))
                if not self._writable.is_set():
                    await self._writable.wait()
        except asyncio.CancelledError:
            pass  # the runtime asked: it knows why
        except Exception as exc:  # the function's own error ends its stream, not the sandbox
            self._host.logger.exception("stream %s failed", rid)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            del self._streams[rid]
            await chunks.aclose()
        self.transport.write(_end(rid, error))


async def _serve(sock: socket.socket, host: FunctionHost) -> int:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    transport, _ = await loop.create_unix_connection(lambda: _Channel(host, done), sock=sock)
    if host.has_start_hooks:
        try:
            await host.start()
        except LoadError as err:
            transport.write(_failed(err))
            return 1
        transport.write(READY)
    await done
    await host.close()
    return 0


def _warm_handler(event: Any, context: Any) -> Any:
    return {"ok": True, "event": event}


def warm_frames(rounds: int) -> bytes:
    header: dict[str, Any] = {"t": "invoke", "rid": "warm", "method": "POST", "path": "/"}
    header |= {"raw_path": "/", "query": "", "headers": [["Content-Type", "application/json"]]}
    header |= {"root_path": "", "client": "", "deadline": 1e18}
    body = b'{"warm": [1, 2.5, "x", null, true]}'
    return b"".join(encode_frame(header | {"id": n}, body) for n in range(rounds))


def _warm_host(block_on: BlockOn | None) -> FunctionHost:
    module = ModuleType("_nest_warm_up")
    module.handler = _warm_handler  # type: ignore[attr-defined]
    info = FunctionInfo(sandbox_id="warm-up", function_name="warm-up")
    return FunctionHost(info, module, "handler", [], _make_run_sync(1), block_on)


def _warm_blocking(rounds: int) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        # Requests and answers both fit in the socket buffers, so one thread plays both ends.
        ours.sendall(warm_frames(rounds) + STOP)
        _serve_blocking(theirs, _warm_host(_LazyLoop().block_on))


async def _warm_asyncio(rounds: int) -> None:
    ours, theirs = socket.socketpair()
    serving = asyncio.create_task(_serve(theirs, _warm_host(None)))
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    frames = warm_frames(rounds)
    writer.write(frames)
    for _ in range(rounds):
        await read_frame(reader)
    writer.write(STOP)
    await serving
    writer.close()
    theirs.close()


def warm_up(rounds: int = 200) -> None:
    """Run throw-away sandbox sessions (both ways of serving) in the zygote before it freezes.

    Why: a fork shares pages only until they are written. Python writes on first use — it
    specialises bytecode as it runs (3.11's adaptive interpreter), fills lazy caches, creates
    interned strings — so if every child did its first invocation itself, each would copy the
    same pages. Doing it once here leaves those pages warm and shared.
    """
    _warm_blocking(rounds)
    asyncio.run(_warm_asyncio(rounds))

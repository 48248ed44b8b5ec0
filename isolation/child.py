"""What a forked sandbox process runs: load the function, say ready, serve invocations.

Why a module of its own: it is imported into the zygote before `gc.freeze()`, so every
sandbox process starts with this code (and asyncio) already loaded and shared copy-on-write.
The process is dedicated to one function, so plain `import` is the right loader here (the
function's modules have their real names); env and working directory are applied before load.

Channel: the socket inherited from the zygote, speaking `isolation.ipc` frames.
    child -> runtime   {"t": "ready"} | {"t": "failed", "reason", "message"}
                       | {"t": "result", "id", "status", "headers"} + body
    runtime -> child   {"t": "invoke", "id", "method", "path", "query", "headers", "deadline"}
                       + body | {"t": "stop"}
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

from isolation import zygote
from isolation.contract import FunctionInfo, Request
from isolation.errors import LoadError
from isolation.host import FunctionHost, classify_load_error, load_layers, parse_handler
from isolation.ipc import encode_frame, read_frame


def main(fd: int, spec: dict[str, Any]) -> int:
    """Runs in the forked child; returns the process exit code."""
    zygote.die_with_parent()
    os.environ.update(spec["env"])
    code_dir = spec["code_dir"]
    os.chdir(spec.get("workdir") or code_dir)
    sys.path.insert(0, code_dir)
    sock = socket.socket(fileno=fd)
    try:
        host = _load(spec)
    except (Exception, SystemExit) as exc:
        err = classify_load_error(exc, spec["handler"])
        sock.sendall(encode_frame({"t": "failed", "reason": err.reason, "message": err.message}))
        return 1
    if not host.has_start_hooks:
        # Nothing left to run before serving: say ready now and build the event loop while the
        # runtime already routes to us (requests wait in the socket buffer). Creating the loop
        # in a fresh fork costs about as much as everything else together.
        sock.sendall(encode_frame({"t": "ready"}))
    return asyncio.run(_serve(sock, host))


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
    return FunctionHost(info, module, attr, layers, _make_run_sync(spec["concurrency"]))


async def _serve(sock: socket.socket, host: FunctionHost) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    if host.has_start_hooks:
        try:
            await host.start()
        except LoadError as err:
            writer.write(
                encode_frame({"t": "failed", "reason": err.reason, "message": err.message})
            )
            await writer.drain()
            return 1
        writer.write(encode_frame({"t": "ready"}))
    tasks: set[asyncio.Task[None]] = set()
    while True:
        try:
            header, body = await read_frame(reader)
        except asyncio.IncompleteReadError:
            break  # the runtime closed the channel
        if header["t"] == "stop":
            break
        task = asyncio.create_task(_invoke(host, writer, header, body))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await host.close()
    return 0


async def _invoke(
    host: FunctionHost, writer: asyncio.StreamWriter, header: dict[str, Any], body: bytes
) -> None:
    request = Request(
        method=header["method"],
        path=header["path"],
        query=header["query"],
        headers=header["headers"],
        body=body,
    )
    response = await host.invoke(request, header["rid"], header["deadline"])
    out = {"t": "result", "id": header["id"], "status": response.status}
    out["headers"] = dict(response.headers)
    writer.write(encode_frame(out, response.body))


def _warm_handler(event: Any, context: Any) -> Any:
    return {"ok": True, "event": event}


async def _warm_session(rounds: int) -> None:
    ours, theirs = socket.socketpair()
    module = ModuleType("_nest_warm_up")
    module.handler = _warm_handler  # type: ignore[attr-defined]
    info = FunctionInfo(sandbox_id="warm-up", function_name="warm-up")
    host = FunctionHost(info, module, "handler", [], _make_run_sync(1))
    serving = asyncio.create_task(_serve(theirs, host))
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    for n in range(rounds):
        header = {"t": "invoke", "id": n, "rid": "warm", "method": "POST", "path": "/"}
        header |= {"query": {}, "headers": {"Content-Type": "application/json"}, "deadline": 1e18}
        writer.write(encode_frame(header, b'{"warm": [1, 2.5, "x", null, true]}'))
        await read_frame(reader)
    writer.write(encode_frame({"t": "stop"}))
    await serving
    writer.close()


def warm_up(rounds: int = 200) -> None:
    """Run a throw-away sandbox session in the zygote before it freezes.

    Why: a fork shares pages only until they are written. Python writes on first use — it
    specialises bytecode as it runs (3.11's adaptive interpreter), fills lazy caches, creates
    interned strings — so if every child did its first invocation itself, each would copy the
    same pages. Doing it once here leaves those pages warm and shared.
    """
    asyncio.run(_warm_session(rounds))

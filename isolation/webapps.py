"""Web apps as functions: a WSGI app (PEP 3333) or an ASGI app (HTTP and lifespan).

Why: Flask, Django, FastAPI and Starlette apps should be hosted unmodified, the handler naming
the app object. These are the pure translations between Nest's `Request`/`Response` and the
app's calling convention; `isolation.host` runs them in both isolation modes (WSGI on the sync
thread path, ASGI awaited on the event loop), so the app sees the same environ or scope in
either. The app is mounted at `Request.root_path` (`/fn/{namespace}/{name}`): WSGI's
SCRIPT_NAME, ASGI's root_path (ASGI's `path` includes it, as uvicorn's does), so it builds its
own external URLs right; scheme, host and client come from the gateway's forwarding headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any
from urllib.parse import unquote

from isolation.contract import Request, Response
from isolation.interfaces import MalformedResponse, header, header_items, raw_path, raw_query
from isolation.streams import Streamed

StartResponse = Callable[..., Callable[[bytes], None]]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Message, Receive, Send], Awaitable[None]]


def _server(request: Request) -> tuple[str, str, int]:
    """(scheme, server name, port) as the caller addressed the gateway."""
    scheme = header(request, "x-forwarded-proto", "http").split(",", 1)[0].strip() or "http"
    host = header(request, "host", "localhost")
    name, sep, port = host.rpartition(":") if host.endswith(tuple("0123456789")) else ("", "", "")
    if not sep or name.endswith(":") or (name.startswith("[") and not name.endswith("]")):
        name, port = host, ""  # no port, or an IPv6 literal without one
    default = 443 if scheme == "https" else 80
    return scheme, name, int(port) if port.isdigit() else default


# -- WSGI (PEP 3333) ---------------------------------------------------------------------------


def wsgi_environ(request: Request) -> dict[str, Any]:
    scheme, server, port = _server(request)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": request.root_path,
        # PEP 3333: the decoded path's bytes, as latin-1 ("bytes-as-unicode").
        "PATH_INFO": unquote(raw_path(request), encoding="latin-1"),
        "QUERY_STRING": raw_query(request),
        "SERVER_NAME": server,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": request.client or "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for key, value in header_items(request):
        name = key.upper().replace("-", "_")
        if name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[name] = value
            continue
        name = f"HTTP_{name}"
        environ[name] = f"{environ[name]},{value}" if name in environ else value
    environ.setdefault("CONTENT_LENGTH", str(len(request.body)))
    return environ


def call_wsgi(app: WsgiApp, environ: dict[str, Any]) -> Response:
    """Run a WSGI app (synchronously: call it on the sync path). Its body is collected when it
    is a list or names its Content-Length (what Flask and Django send when not streaming), else
    streamed: the rest of the iterable is read chunk by chunk, as a WSGI server would."""
    started: list[tuple[str, list[tuple[str, str]]]] = []
    written: list[bytes] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [(status, headers)]
        return written.append

    result = app(environ, start_response)
    chunks = iter(result)
    try:
        while not started:  # PEP 3333: start_response may come with the first chunk
            written.append(bytes(next(chunks)))
    except StopIteration:
        pass
    except BaseException:
        _close(result)
        raise
    if not started:
        _close(result)
        raise MalformedResponse("the WSGI app returned without calling start_response")
    status, headers = started[0]
    code = status.split(" ", 1)[0]
    if not (code.isdigit() and 100 <= int(code) <= 599):
        _close(result)
        raise MalformedResponse(f"the WSGI app's status {status!r} is not an HTTP status")
    pairs = [(str(k), str(v)) for k, v in headers]
    sized = any(k.lower() == "content-length" for k, _ in pairs)
    if not sized and not isinstance(result, list | tuple):
        return Response(int(code), pairs, Streamed(_rest(written, chunks, result)))
    try:
        written.extend(bytes(chunk) for chunk in chunks)
    finally:
        _close(result)
    return Response(int(code), pairs, b"".join(written))


def _close(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _rest(first: list[bytes], chunks: Iterator[bytes], result: Iterable[bytes]) -> Iterator[bytes]:
    try:
        yield from first
        for chunk in chunks:
            yield bytes(chunk)
    finally:
        _close(result)  # PEP 3333: always, also when the caller left early


# -- ASGI (HTTP and lifespan) ------------------------------------------------------------------


def asgi_scope(request: Request, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """The HTTP scope; `state` is what lifespan startup left, copied per request as uvicorn."""
    scheme, server, port = _server(request)
    raw = raw_path(request)
    return {
        "type": "http",
        # 2.4: send raises OSError once the caller is gone (how Starlette notices it).
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": scheme,
        # As uvicorn does: `path` includes the mount prefix, which `root_path` names.
        "path": request.root_path + unquote(raw),
        "raw_path": (request.root_path + raw).encode("latin-1", "replace"),
        "query_string": raw_query(request).encode("latin-1", "replace"),
        "root_path": request.root_path,
        "headers": [
            (k.lower().encode("latin-1"), v.encode("latin-1", "replace"))
            for k, v in header_items(request)
        ],
        "client": (request.client or "127.0.0.1", 0),
        "server": (server, port),
        "state": dict(state) if state else {},
    }


_END = object()  # the app sent its last body chunk


class AsgiBody:
    """The rest of an ASGI app's streamed body (`more_body`), as it sends it. The app runs on
    as a task: `send` waits while chunks are not read yet (a small queue: the app is paced by
    its caller), and `aclose` tells it the caller left (send raises OSError, as ASGI 2.4 says;
    receive answers http.disconnect) before cancelling it."""

    def __init__(self, task: asyncio.Task[None], queue: asyncio.Queue[Any], gone: asyncio.Event):
        self._task = task
        self._queue = queue
        self._gone = gone

    def __aiter__(self) -> AsgiBody:
        return self

    async def __anext__(self) -> bytes:
        if self._queue.empty() and self._task.done():
            self._task.result()  # the app's own error ends the stream with it
            raise StopAsyncIteration
        getter = asyncio.ensure_future(self._queue.get())
        waiting: set[asyncio.Future[Any]] = {getter, self._task}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if not getter.done() or getter.cancelled():
            self._task.result()
            raise StopAsyncIteration  # returned without its last chunk: as good as the end
        item = getter.result()
        if item is _END:
            await self._task  # its background tasks run before the stream is over
            raise StopAsyncIteration
        chunk: bytes = item
        return chunk

    async def aclose(self) -> None:
        self._gone.set()
        if not self._task.done():
            self._task.cancel()
        # The app's reaction to a caller that left is its own business.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self._task


async def call_asgi(app: AsgiApp, scope: dict[str, Any], body: bytes) -> Response:
    """Run one HTTP request through an ASGI app. Its answer is collected when it comes in one
    body message (the usual case), and streamed (`Streamed(AsgiBody)`) from the first chunk
    that says more_body."""
    loop = asyncio.get_running_loop()
    body_sent = False
    status: int | None = None
    headers: list[tuple[str, str]] = []
    chunks: list[bytes] = []
    decided: asyncio.Future[bool] = loop.create_future()  # True: streamed
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=8)
    gone = asyncio.Event()  # the response is complete, or its caller left

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()  # as a server does: nothing more until the connection ends
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, headers
        kind = message["type"]
        if gone.is_set() and decided.done():
            raise OSError("the caller is gone, or the response was complete")
        if kind == "http.response.start":
            status = int(message["status"])
            headers = [
                (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
                for k, v in message.get("headers", ())
            ]
            return
        if kind != "http.response.body":
            return
        if status is None:
            raise MalformedResponse("the ASGI app sent a body before http.response.start")
        data = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if not decided.done():
            if not more:
                chunks.append(data)
                gone.set()
                decided.set_result(False)
            elif data:
                queue.put_nowait(data)  # first in the queue: whatever it sends next queues after
                decided.set_result(True)
            return
        if data:
            await queue.put(data)
        if not more:
            gone.set()
            await queue.put(_END)

    task = asyncio.ensure_future(app(scope, receive, send))
    streaming = False
    try:
        first: set[asyncio.Future[Any]] = {decided, task}
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if decided.done() and decided.result():
            streaming = True
            return Response(status or 500, headers, Streamed(AsgiBody(task, queue, gone)))
        await task  # its background tasks too, before the answer counts as done
    finally:
        if not streaming and not task.done():
            task.cancel()  # the invocation was cancelled (its timeout) under us
    if status is None:
        raise MalformedResponse("the ASGI app returned without sending a response")
    return Response(status, headers, b"".join(chunks))


class Lifespan:
    """ASGI lifespan around a function's life: startup at function start, shutdown at stop.

    Apps that do not speak lifespan (they raise on the scope or return, as the spec allows)
    run without it, as uvicorn's `lifespan="auto"` does. What startup puts in `state` is
    copied into every request's scope.
    """

    def __init__(self, app: AsgiApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.supported = True
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Future[None] | None = None

    async def _step(self, step: str) -> None:
        assert self._task is not None
        await self._to_app.put({"type": f"lifespan.{step}"})
        reply: asyncio.Future[Message] = asyncio.ensure_future(self._from_app.get())
        waiting: set[asyncio.Future[Any]] = {reply, self._task}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            reply.cancel()
            raise
        if not reply.done():  # the app ended (or raised) instead of answering
            reply.cancel()
            error = self._task.exception()
            if step == "startup":
                self.supported = False
            elif error is not None:
                raise error
            return
        message = reply.result()
        if message["type"] == f"lifespan.{step}.failed":
            raise RuntimeError(f"ASGI lifespan {step} failed: {message.get('message', '')}")

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        self._task = asyncio.ensure_future(self.app(scope, self._to_app.get, self._from_app.put))
        await self._step("startup")

    async def shutdown(self) -> None:
        try:
            if self.supported and self._task is not None and not self._task.done():
                await self._step("shutdown")
        finally:
            self.abort()

    def abort(self) -> None:
        """End the lifespan task if it still runs (shutdown overran, or was never reached)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

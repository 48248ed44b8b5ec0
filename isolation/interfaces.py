"""The contracts users already write: Lambda's API Gateway events, ASGI and WSGI apps.

Why: a function brought from AWS or from a web framework should run unmodified. Each interface
is a pair of pure translations between Nest's `Request`/`Response` and what that contract's
code expects (an API Gateway v1 or v2 event and proxy response, a PEP 3333 environ, an ASGI
HTTP scope and its messages), written once here and used by both isolation modes through
`isolation.host`, so the request shape cannot differ between them.

What the function sees is the path after `/fn/{namespace}/{name}`, as behind a Function URL;
ASGI's `root_path` and WSGI's `SCRIPT_NAME` carry the prefix so the apps build their own
external URLs right. Repeated query values and headers are kept (`Request.header_items`,
`Request.raw_query`), so `multiValueHeaders` and `getlist()` see every value.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from isolation.contract import JSON_TYPE, Request, Response


class Interface(StrEnum):
    """`spec.function.interface`: how a request reaches the handler and its answer returns."""

    NEST = "nest"
    APIGATEWAY_V1 = "apigateway-v1"
    APIGATEWAY_V2 = "apigateway-v2"
    ASGI = "asgi"
    WSGI = "wsgi"


class MalformedResponse(ValueError):
    """A Lambda proxy answer API Gateway itself would refuse (its 502 'Malformed Lambda proxy
    response'); the message says what is wrong with it."""


# Content types API Gateway hands to a function as text; anything else travels base64.
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")
_TEXT_SUFFIXES = ("+json", "+xml")


def header_items(request: Request) -> list[tuple[str, str]]:
    """Every header as sent, repeats kept (falls back to the single-valued mapping)."""
    if request.header_items:
        return list(request.header_items)
    return list(request.headers.items())


def query_items(request: Request) -> list[tuple[str, str]]:
    if request.raw_query:
        return parse_qsl(request.raw_query, keep_blank_values=True)
    return list(request.query.items())


def raw_query(request: Request) -> str:
    if request.raw_query or not request.query:
        return request.raw_query
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in request.query.items())


def _header(request: Request, name: str, default: str = "") -> str:
    lower = name.lower()
    for key, value in header_items(request):
        if key.lower() == lower:
            return value
    return default


def _is_text(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return (
        base.startswith(_TEXT_TYPES)
        or base.endswith(_TEXT_SUFFIXES)
        or (base == "application/x-www-form-urlencoded")
    )


def _event_body(request: Request) -> tuple[str | None, bool]:
    """The body as API Gateway puts it in an event: text when it is, else base64."""
    if not request.body:
        return None, False
    if _is_text(_header(request, "content-type")):
        try:
            return request.body.decode(), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(request.body).decode(), True


def _grouped(items: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key, value in items:
        grouped.setdefault(key, []).append(value)
    return grouped


def _request_context(request: Request, request_id: str) -> dict[str, Any]:
    return {
        "accountId": "nest",
        "apiId": "nest",
        "domainName": _header(request, "host", "localhost"),
        "requestId": request_id,
        "stage": "$default",
        "requestTimeEpoch": int(time.time() * 1000),
    }


def apigateway_v1_event(request: Request, request_id: str) -> dict[str, Any]:
    """The REST API proxy integration's event (payload 1.0) for an HTTP request."""
    headers = header_items(request)
    query = query_items(request)
    multi_headers = _grouped(headers)
    multi_query = _grouped(query)
    body, is_b64 = _event_body(request)
    proxy = request.path.lstrip("/")
    context = _request_context(request, request_id)
    context.update(
        {
            "resourcePath": "/{proxy+}",
            "httpMethod": request.method,
            "path": request.root_path + request.path,
            "protocol": "HTTP/1.1",
            "identity": {
                "sourceIp": request.client or "127.0.0.1",
                "userAgent": _header(request, "user-agent") or None,
            },
        }
    )
    return {
        "resource": "/{proxy+}",
        "path": request.path,
        "httpMethod": request.method,
        "headers": {k: v[-1] for k, v in multi_headers.items()} or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": {"proxy": proxy} if proxy else None,
        "stageVariables": None,
        "requestContext": context,
        "body": body,
        "isBase64Encoded": is_b64,
    }


def apigateway_v2_event(request: Request, request_id: str) -> dict[str, Any]:
    """The HTTP API / Function URL event (payload 2.0): lowercase headers joined by commas,
    cookies on their own."""
    cookies: list[str] = []
    headers: dict[str, str] = {}
    for key, value in header_items(request):
        name = key.lower()
        if name == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
        elif name in headers:
            headers[name] = f"{headers[name]},{value}"
        else:
            headers[name] = value
    query = {k: ",".join(v) for k, v in _grouped(query_items(request)).items()}
    body, is_b64 = _event_body(request)
    context = _request_context(request, request_id)
    context.update(
        {
            "routeKey": "$default",
            "timeEpoch": context.pop("requestTimeEpoch"),
            "http": {
                "method": request.method,
                "path": request.path,
                "protocol": "HTTP/1.1",
                "sourceIp": request.client or "127.0.0.1",
                "userAgent": headers.get("user-agent", ""),
            },
        }
    )
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": request.path,
        "rawQueryString": raw_query(request),
        "headers": headers,
        "requestContext": context,
        "isBase64Encoded": is_b64,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if body is not None:
        event["body"] = body
    return event


def _response_body(answer: Mapping[str, Any]) -> bytes:
    body = answer.get("body")
    if body is None:
        return b""
    if not isinstance(body, str):
        raise MalformedResponse(f"'body' must be a string, not {type(body).__name__}")
    if answer.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except ValueError as exc:
            raise MalformedResponse(f"'body' is not valid base64: {exc}") from None
    return body.encode()


def _status(answer: Mapping[str, Any]) -> int:
    status = answer.get("statusCode", 200)
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise MalformedResponse(f"'statusCode' must be an HTTP status, not {status!r}")
    return status


def _header_pairs(answer: Mapping[str, Any]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    single = answer.get("headers") or {}
    multi = answer.get("multiValueHeaders") or {}
    if not isinstance(single, Mapping) or not isinstance(multi, Mapping):
        raise MalformedResponse("'headers' and 'multiValueHeaders' must be objects")
    for name, value in single.items():
        if name not in multi:
            pairs.append((str(name), str(value)))
    for name, values in multi.items():
        if not isinstance(values, list):
            raise MalformedResponse(f"multiValueHeaders[{name!r}] must be a list")
        pairs.extend((str(name), str(v)) for v in values)
    return pairs


def apigateway_v1_response(answer: Any) -> Response:
    """A REST API proxy answer as HTTP; anything else is what API Gateway refuses."""
    if not isinstance(answer, Mapping) or "statusCode" not in answer:
        raise MalformedResponse(
            "an apigateway-v1 handler must return {'statusCode': ..., 'body': ...}, "
            f"not {type(answer).__name__}"
        )
    return Response(_status(answer), _header_pairs(answer), _response_body(answer))


def apigateway_v2_response(answer: Any) -> Response:
    """Payload 2.0: a dict with `statusCode` is the response; any other JSON value is a 200
    application/json body, as AWS does."""
    if not isinstance(answer, Mapping) or "statusCode" not in answer:
        body = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
        return Response(200, [("Content-Type", JSON_TYPE)], body)
    pairs = _header_pairs(answer)
    cookies = answer.get("cookies") or []
    if not isinstance(cookies, list):
        raise MalformedResponse("'cookies' must be a list of Set-Cookie values")
    pairs.extend(("Set-Cookie", str(cookie)) for cookie in cookies)
    if not any(k.lower() == "content-type" for k, _ in pairs):
        pairs.append(("Content-Type", JSON_TYPE))
    return Response(_status(answer), pairs, _response_body(answer))


# -- WSGI (PEP 3333) ---------------------------------------------------------------------------

StartResponse = Callable[..., Callable[[bytes], None]]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def wsgi_environ(request: Request) -> dict[str, Any]:
    host = _header(request, "host", "localhost")
    server, _, port = host.partition(":")
    scheme = _header(request, "x-forwarded-proto", "http")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": request.root_path,
        "PATH_INFO": unquote(request.path, encoding="latin-1"),
        "QUERY_STRING": raw_query(request),
        "SERVER_NAME": server,
        "SERVER_PORT": port or ("443" if scheme == "https" else "80"),
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


def call_wsgi(app: WsgiApp, request: Request) -> Response:
    """Run a WSGI app to completion (synchronously: call it on a worker thread)."""
    started: list[tuple[str, list[tuple[str, str]]]] = []
    written: list[bytes] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [(status, headers)]
        return written.append

    result = app(wsgi_environ(request), start_response)
    try:
        written.extend(bytes(chunk) for chunk in result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not started:
        raise MalformedResponse("the WSGI app returned without calling start_response")
    status, headers = started[0]
    return Response(int(status.split(" ", 1)[0]), list(headers), b"".join(written))


# -- ASGI (HTTP and lifespan) ------------------------------------------------------------------

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Message, Receive, Send], Awaitable[None]]


def asgi_scope(request: Request) -> dict[str, Any]:
    host = _header(request, "host", "localhost")
    server, _, port = host.partition(":")
    scheme = _header(request, "x-forwarded-proto", "http")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": scheme,
        # As uvicorn does: `path` includes the mount prefix, which `root_path` names.
        "path": request.root_path + unquote(request.path),
        "raw_path": (request.root_path + request.path).encode(),
        "query_string": raw_query(request).encode(),
        "root_path": request.root_path,
        "headers": [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in header_items(request)
        ],
        "client": (request.client or "127.0.0.1", 0),
        "server": (server, int(port) if port.isdigit() else (443 if scheme == "https" else 80)),
        "state": {},
    }


async def call_asgi(
    app: AsgiApp, request: Request, state: dict[str, Any] | None = None
) -> Response:
    """Run one HTTP request through an ASGI app and collect its response."""
    scope = asgi_scope(request)
    if state is not None:
        scope["state"] = dict(state)
    body_sent = False
    status = 500
    headers: list[tuple[str, str]] = []
    chunks: list[bytes] = []
    finished = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, headers, finished
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers = [
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", ())
            ]
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            finished = not message.get("more_body", False)

    await app(scope, receive, send)
    if not finished and not chunks and status == 500 and not headers:
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
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
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
        if self.supported and self._task is not None and not self._task.done():
            await self._step("shutdown")

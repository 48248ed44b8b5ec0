"""Every interface on every backend, with hand-written minimal apps: one request shape.

The request is built as the runtime's data plane builds it (aiohttp's multidicts, every header
pair in order, the raw query), so what each app sees here is what it sees behind the runtime,
and each test asserts one expected answer for all backends: the shape cannot differ by mode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import pytest
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from isolation.base import Backend, SandboxSpec
from isolation.contract import Request, Response
from isolation.errors import LoadError
from tests.conformance.support import write_function

PREFIX = "/fn/team/shop"
HEADERS = [
    ("Host", "gw.example:8443"),
    ("X-Multi", "one"),
    ("Content-Type", "application/json"),
    ("x-multi", "two"),
    ("Cookie", "a=1; b=2"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-For", "127.0.0.23, 127.0.0.9"),
]


def runtime_request(
    method: str = "GET",
    path: str = "/items/7%20x",
    raw_query: str = "tag=a&tag=b&q=x%20y&empty=",
    body: bytes = b"",
    headers: list[tuple[str, str]] = HEADERS,
) -> Request:
    """A Request as sandbox.runtime builds one from an HTTP trigger the gateway forwarded."""
    proxy = CIMultiDictProxy(CIMultiDict(headers))
    query = MultiDictProxy(MultiDict(parse_qsl(raw_query, keep_blank_values=True)))
    return Request(
        method, unquote(path), query, proxy, body, raw_query, proxy.items(), PREFIX,
        "127.0.0.9", path,
    )  # fmt: skip


def load(response: Response) -> Any:
    return json.loads(response.body)


async def read(response: Response) -> bytes:
    """The whole body, streamed or not."""
    if isinstance(response.body, bytes):
        return response.body
    return b"".join([chunk async for chunk in response.body])


def header_values(response: Response, name: str) -> list[str]:
    pairs = response.headers.items() if hasattr(response.headers, "items") else response.headers
    return [v for k, v in pairs if k.lower() == name.lower()]


SHAPE = """
def handler(event, context):
    r = context.request
    return {
        "path": r.path, "raw_path": r.raw_path, "root_path": r.root_path, "client": r.client,
        "first_tag": r.query["tag"], "query": dict(r.query), "raw_query": r.raw_query,
        "multi": r.headers["x-MULTI"], "all_multi": [v for k, v in r.header_items
                                                     if k.lower() == "x-multi"],
        "header_names": [k for k, _ in r.header_items], "host": r.headers.get("host"),
    }
"""


async def test_nest_handlers_see_one_request_shape(backend: Backend, tmp_path: Path) -> None:
    await backend.create(SandboxSpec("s1", write_function(tmp_path / "fn", SHAPE), "main:handler"))
    got = load(await backend.invoke("s1", runtime_request()))
    assert got == {
        "path": "/items/7 x", "raw_path": "/items/7%20x", "root_path": PREFIX,
        "client": "127.0.0.9", "first_tag": "a",
        "query": {"tag": "a", "q": "x y", "empty": ""}, "raw_query": "tag=a&tag=b&q=x%20y&empty=",
        "multi": "one", "all_multi": ["one", "two"], "header_names": [k for k, _ in HEADERS],
        "host": "gw.example:8443",
    }  # fmt: skip


LAMBDA = """
import base64, json

def v1(event, context):
    status = 404 if event["path"] == "/missing" else 200
    seen = {k: event[k] for k in ("httpMethod", "path", "resource", "pathParameters",
                                  "queryStringParameters", "multiValueQueryStringParameters",
                                  "body", "isBase64Encoded")}
    seen["multi"] = event["multiValueHeaders"]["x-multi"] + event["multiValueHeaders"]["X-Multi"]
    seen["host"] = event["headers"]["Host"]
    seen["context_path"] = event["requestContext"]["path"]
    seen["source_ip"] = event["requestContext"]["identity"]["sourceIp"]
    return {"statusCode": status, "headers": {"Content-Type": "application/json"},
            "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]}, "body": json.dumps(seen)}

def v2(event, context):
    return {k: event.get(k) for k in ("rawPath", "rawQueryString", "cookies",
                                      "queryStringParameters", "body", "isBase64Encoded")} | {
        "multi": event["headers"]["x-multi"], "method": event["requestContext"]["http"]["method"],
        "source_ip": event["requestContext"]["http"]["sourceIp"]}

def v2_full(event, context):
    png = base64.b64encode(b"\\x89PNG").decode()
    return {"statusCode": 201, "cookies": ["s=1", "t=2"], "isBase64Encoded": True,
            "headers": {"Content-Type": "image/png"}, "body": png}

def malformed(event, context):
    return {"body": "a dict without statusCode is not a proxy response"}

def not_a_string(event, context):
    return {"statusCode": 200, "body": {"a": 1}}
"""


async def test_apigateway_v1_event_and_proxy_response(backend: Backend, tmp_path: Path) -> None:
    code = write_function(tmp_path / "fn", LAMBDA)
    await backend.create(SandboxSpec("s1", code, "main:v1", interface="apigateway-v1"))
    response = await backend.invoke("s1", runtime_request("GET", "/missing"))
    assert response.status == 404
    assert header_values(response, "Set-Cookie") == ["a=1", "b=2"]
    assert load(response)["path"] == "/missing"
    request = runtime_request("POST", body=b'{"n": 1}')
    response = await backend.invoke("s1", request)
    assert response.status == 200
    assert load(response) == {
        "httpMethod": "POST", "path": "/items/7 x", "resource": "/{proxy+}",
        "pathParameters": {"proxy": "items/7 x"},
        "queryStringParameters": {"tag": "b", "q": "x y", "empty": ""},
        "multiValueQueryStringParameters": {"tag": ["a", "b"], "q": ["x y"], "empty": [""]},
        "body": '{"n": 1}', "isBase64Encoded": False, "multi": ["two", "one"],
        "host": "gw.example:8443", "context_path": PREFIX + "/items/7 x",
        "source_ip": "127.0.0.9",
    }  # fmt: skip


async def test_apigateway_v2_payload_and_responses(backend: Backend, tmp_path: Path) -> None:
    code = write_function(tmp_path / "fn", LAMBDA)
    await backend.create(SandboxSpec("plain", code, "main:v2", interface="apigateway-v2"))
    await backend.create(SandboxSpec("full", code, "main:v2_full", interface="apigateway-v2"))
    response = await backend.invoke("plain", runtime_request("PUT", body=b"\xff\x00"))
    assert response.status == 200
    assert header_values(response, "Content-Type") == ["application/json"]
    got = load(response)
    assert got == {
        "rawPath": "/items/7%20x", "rawQueryString": "tag=a&tag=b&q=x%20y&empty=",
        "cookies": ["a=1", "b=2"], "queryStringParameters": {"tag": "a,b", "q": "x y", "empty": ""},
        # Not UTF-8 although its type says JSON: API Gateway sends it base64, as here.
        "body": "/wA=", "isBase64Encoded": True, "multi": "one,two", "method": "PUT",
        "source_ip": "127.0.0.9",
    }  # fmt: skip
    response = await backend.invoke("full", runtime_request())
    assert (response.status, response.body) == (201, b"\x89PNG")
    assert header_values(response, "Set-Cookie") == ["s=1", "t=2"]
    assert header_values(response, "Content-Type") == ["image/png"]


@pytest.mark.parametrize(
    ("handler", "words"),
    [("main:malformed", "must return {'statusCode'"), ("main:not_a_string", "must be a string")],
)
async def test_a_malformed_proxy_response_is_a_502_naming_the_problem(
    backend: Backend, tmp_path: Path, handler: str, words: str
) -> None:
    code = write_function(tmp_path / "fn", LAMBDA)
    await backend.create(SandboxSpec("s1", code, handler, interface="apigateway-v1"))
    response = await backend.invoke("s1", runtime_request())
    assert response.status == 502
    assert header_values(response, "Content-Type") == ["application/problem+json"]
    problem = load(response)
    assert problem["title"] == "Malformed Lambda proxy response" and words in problem["detail"]


WSGI = """
import json

def app(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("418 I'm a teapot", [("Content-Type", "application/json"),
                                        ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    keys = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME",
            "SERVER_PORT", "REMOTE_ADDR", "HTTP_X_MULTI", "HTTP_HOST", "CONTENT_TYPE",
            "wsgi.url_scheme")
    return [json.dumps({k: environ.get(k) for k in keys} | {"body": body.decode()}).encode()]

not_an_app = 42
"""


async def test_wsgi_app_gets_pep_3333_environ(backend: Backend, tmp_path: Path) -> None:
    code = write_function(tmp_path / "fn", WSGI)
    await backend.create(SandboxSpec("s1", code, "main:app", interface="wsgi"))
    response = await backend.invoke("s1", runtime_request("POST", body=b"tea"))
    assert response.status == 418
    assert header_values(response, "Set-Cookie") == ["a=1", "b=2"]
    assert load(response) == {
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": PREFIX, "PATH_INFO": "/items/7 x",
        "QUERY_STRING": "tag=a&tag=b&q=x%20y&empty=", "SERVER_NAME": "gw.example",
        "SERVER_PORT": "8443", "REMOTE_ADDR": "127.0.0.9", "HTTP_X_MULTI": "one,two",
        "HTTP_HOST": "gw.example:8443", "CONTENT_TYPE": "application/json",
        "wsgi.url_scheme": "https", "body": "tea",
    }  # fmt: skip


async def test_a_handler_that_is_no_app_fails_create(backend: Backend, tmp_path: Path) -> None:
    code = write_function(tmp_path / "fn", WSGI)
    with pytest.raises(LoadError) as err:
        await backend.create(SandboxSpec("s1", code, "main:not_an_app", interface="wsgi"))
    assert err.value.reason == "HandlerNotFound"


ASGI = """
import json

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["started"] = "yes"
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    seen = {k: scope[k] for k in ("method", "path", "root_path", "scheme", "http_version")}
    seen |= {"raw_path": scope["raw_path"].decode(), "query": scope["query_string"].decode(),
             "client": scope["client"][0], "server": list(scope["server"]),
             "multi": [v.decode() for k, v in scope["headers"] if k == b"x-multi"],
             "started": scope["state"].get("started"), "body": body.decode()}
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"application/json"), (b"set-cookie", b"a=1"),
                            (b"set-cookie", b"b=2")]})
    await send({"type": "http.response.body", "body": json.dumps(seen).encode()[:5],
                "more_body": True})
    await send({"type": "http.response.body", "body": json.dumps(seen).encode()[5:]})

async def failing_startup(scope, receive, send):
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "no database"})
"""


async def test_asgi_app_gets_its_scope_and_lifespan_state(backend: Backend, tmp_path: Path) -> None:
    code = write_function(tmp_path / "fn", ASGI)
    await backend.create(SandboxSpec("s1", code, "main:app", interface="asgi"))
    response = await backend.invoke("s1", runtime_request("PATCH", body=b"hi"))
    assert response.status == 201
    assert header_values(response, "set-cookie") == ["a=1", "b=2"]
    assert not isinstance(response.body, bytes), "more_body: a streamed answer"
    assert json.loads(await read(response)) == {
        "method": "PATCH", "path": PREFIX + "/items/7 x", "root_path": PREFIX, "scheme": "https",
        "http_version": "1.1", "raw_path": PREFIX + "/items/7%20x",
        "query": "tag=a&tag=b&q=x%20y&empty=", "client": "127.0.0.9",
        "server": ["gw.example", 8443], "multi": ["one", "two"], "started": "yes", "body": "hi",
    }  # fmt: skip


async def test_asgi_lifespan_startup_failure_fails_create(backend: Backend, tmp_path: Path) -> None:
    code = write_function(tmp_path / "fn", ASGI)
    with pytest.raises(LoadError, match="no database"):
        await backend.create(SandboxSpec("s1", code, "main:failing_startup", interface="asgi"))

"""The interface translations, against the shapes AWS documents and PEP 3333 / ASGI 3 define."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from isolation.contract import Request, Response, to_response
from isolation.interfaces import (
    MalformedResponse,
    apigateway_v1_event,
    apigateway_v1_response,
    apigateway_v2_event,
    apigateway_v2_response,
)
from isolation.streams import Streamed
from isolation.webapps import Lifespan, asgi_scope, call_asgi, call_wsgi, wsgi_environ

REQUEST = Request(
    method="GET",
    path="/items/7",
    body=b"",
    raw_query="tag=a&tag=b&q=x%20y",
    header_items=(
        ("Host", "gw.example:8080"),
        ("Accept", "text/html"),
        ("Accept", "application/json"),
        ("Cookie", "a=1; b=2"),
        ("X-Forwarded-Proto", "https"),
    ),
    root_path="/fn/team/shop",
    client="127.0.0.9",
)


def test_v1_event_keeps_repeated_values_and_names_the_proxy_path() -> None:
    event = apigateway_v1_event(REQUEST, "rid-1")
    assert event["httpMethod"] == "GET"
    assert event["path"] == "/items/7"
    assert event["pathParameters"] == {"proxy": "items/7"}
    assert event["multiValueQueryStringParameters"] == {"tag": ["a", "b"], "q": ["x y"]}
    assert event["queryStringParameters"] == {"tag": "b", "q": "x y"}
    assert event["multiValueHeaders"]["Accept"] == ["text/html", "application/json"]
    assert event["headers"]["Accept"] == "application/json"
    assert event["requestContext"]["identity"]["sourceIp"] == "127.0.0.9"
    assert event["requestContext"]["path"] == "/fn/team/shop/items/7"
    assert event["body"] is None and event["isBase64Encoded"] is False


def test_event_bodies_are_text_when_text_and_base64_otherwise() -> None:
    text = Request(body=b'{"a": 1}', header_items=(("Content-Type", "application/json"),))
    binary = Request(body=b"\xff\x00", header_items=(("Content-Type", "image/png"),))
    assert apigateway_v1_event(text, "r")["body"] == '{"a": 1}'
    event = apigateway_v2_event(binary, "r")
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\xff\x00"


def test_v1_response_is_the_http_response_with_its_status() -> None:
    response = apigateway_v1_response(
        {
            "statusCode": 404,
            "headers": {"Content-Type": "text/plain"},
            "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
            "body": "no such item",
        }
    )
    assert response.status == 404
    assert list(response.headers) == [
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]
    assert response.body == b"no such item"


def test_v1_base64_body_is_decoded() -> None:
    answer = {"statusCode": 200, "body": base64.b64encode(b"\x89PNG").decode()}
    answer["isBase64Encoded"] = True
    assert apigateway_v1_response(answer).body == b"\x89PNG"


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ({"hello": "world"}, "must return {'statusCode'"),
        ({"statusCode": 200, "body": {"a": 1}}, "'body' must be a string"),
        ({"statusCode": 99}, "'statusCode' must be an HTTP status"),
        ({"statusCode": 200, "body": "%%", "isBase64Encoded": True}, "not valid base64"),
    ],
)
def test_v1_malformed_answers_say_what_is_wrong(answer: Any, says: str) -> None:
    with pytest.raises(MalformedResponse, match=says):
        apigateway_v1_response(answer)


def test_v2_event_has_cookies_apart_and_headers_joined() -> None:
    event = apigateway_v2_event(REQUEST, "rid-2")
    assert event["version"] == "2.0"
    assert event["rawPath"] == "/items/7"
    assert event["rawQueryString"] == "tag=a&tag=b&q=x%20y"
    assert event["cookies"] == ["a=1", "b=2"]
    assert "cookie" not in event["headers"]
    assert event["headers"]["accept"] == "text/html,application/json"
    assert event["queryStringParameters"] == {"tag": "a,b", "q": "x y"}
    assert event["requestContext"]["http"]["method"] == "GET"


def test_v2_plain_json_is_a_200_and_cookies_become_set_cookie() -> None:
    plain = apigateway_v2_response({"ok": True})
    assert (plain.status, plain.body) == (200, b'{"ok": true}')
    assert ("Content-Type", "application/json") in list(plain.headers)
    full = apigateway_v2_response({"statusCode": 201, "cookies": ["s=1"], "body": "made"})
    assert full.status == 201
    assert ("Set-Cookie", "s=1") in list(full.headers)


def test_wsgi_environ_mounts_the_app_under_its_prefix() -> None:
    environ = wsgi_environ(REQUEST)
    assert environ["SCRIPT_NAME"] == "/fn/team/shop"
    assert environ["PATH_INFO"] == "/items/7"
    assert environ["QUERY_STRING"] == "tag=a&tag=b&q=x%20y"
    assert environ["HTTP_ACCEPT"] == "text/html,application/json"
    assert environ["wsgi.url_scheme"] == "https"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("gw.example", "8080")


def test_wsgi_app_status_headers_and_body() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ["CONTENT_LENGTH"])
        body = environ["wsgi.input"].read(length)
        start_response("418 I'm a teapot", [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
        return [b"got ", body]

    response = call_wsgi(app, wsgi_environ(Request(method="POST", body=b"tea")))
    assert response.status == 418
    assert [v for k, v in response.headers if k == "Set-Cookie"] == ["a=1", "b=2"]
    assert response.body == b"got tea"


def test_wsgi_app_that_never_starts_a_response_is_malformed() -> None:
    with pytest.raises(MalformedResponse):
        call_wsgi(lambda environ, start_response: [b"x"], wsgi_environ(Request()))


def test_asgi_scope_path_includes_root_path_as_uvicorn_does() -> None:
    scope = asgi_scope(REQUEST)
    assert scope["path"] == "/fn/team/shop/items/7"
    assert scope["root_path"] == "/fn/team/shop"
    assert scope["query_string"] == b"tag=a&tag=b&q=x%20y"
    assert (b"accept", b"text/html") in scope["headers"]
    assert scope["scheme"] == "https"


async def _echo(scope: Any, receive: Any, send: Any) -> None:
    message = await receive()
    await send({"type": "http.response.start", "status": 201, "headers": [(b"x-a", b"1")]})
    await send({"type": "http.response.body", "body": message["body"], "more_body": True})
    await send({"type": "http.response.body", "body": scope["state"].get("greeting", b"")})


async def _one_message(scope: Any, receive: Any, send: Any) -> None:
    message = await receive()
    await send({"type": "http.response.start", "status": 201, "headers": [(b"x-a", b"1")]})
    await send({"type": "http.response.body", "body": message["body"] + b"there"})


def test_an_asgi_answer_in_one_message_is_collected() -> None:
    scope = asgi_scope(Request(body=b"hi "))
    response = asyncio.run(call_asgi(_one_message, scope, b"hi "))
    assert (response.status, response.body) == (201, b"hi there")
    assert list(response.headers) == [("x-a", "1")]


def test_an_asgi_answer_with_more_body_is_streamed_in_order() -> None:
    async def run() -> tuple[int, list[bytes]]:
        scope = asgi_scope(Request(body=b"hi "), {"greeting": b"there"})
        response = await call_asgi(_echo, scope, b"hi ")
        assert isinstance(response.body, Streamed)
        source = response.body.source
        assert isinstance(source, AsyncIterator)
        return response.status, [chunk async for chunk in source]

    assert asyncio.run(run()) == (201, [b"hi ", b"there"])


def test_lifespan_runs_startup_and_shutdown_and_shares_state() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "lifespan.startup":
                scope["state"]["greeting"] = b"hello"
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def run() -> dict[str, Any]:
        lifespan = Lifespan(app)
        await lifespan.startup()
        await lifespan.shutdown()
        return lifespan.state

    assert asyncio.run(run()) == {"greeting": b"hello"}
    assert seen == ["lifespan.startup", "lifespan.shutdown"]


def test_an_app_without_lifespan_runs_without_it() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http", "lifespan not supported"

    async def run() -> bool:
        lifespan = Lifespan(app)
        await lifespan.startup()
        await lifespan.shutdown()
        return lifespan.supported

    assert asyncio.run(run()) is False


def test_lifespan_startup_failure_raises_with_the_apps_message() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(RuntimeError, match="no database"):
        asyncio.run(Lifespan(app).startup())


def test_response_header_pairs_keep_repeats_and_get_a_content_type() -> None:
    response = to_response(Response(200, [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")], "x"))
    assert list(response.headers) == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Type", "text/plain; charset=utf-8"),
    ]

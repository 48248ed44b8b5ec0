"""The contracts users already write: Lambda's API Gateway events and proxy responses.

Why: a function brought from AWS or from a web framework should run unmodified. Each interface
is a pair of pure translations between Nest's `Request`/`Response` and what that contract's
code expects — here an API Gateway v1 or v2 event and its proxy response; in
`isolation.webapps` a PEP 3333 environ and an ASGI HTTP scope — written once and used by both
isolation modes through `isolation.host`, so the request shape cannot differ between them.

What the function sees is the path after `/fn/{namespace}/{name}`, as behind a Function URL;
ASGI's `root_path` and WSGI's `SCRIPT_NAME` carry the prefix so the apps build their own
external URLs right. Repeated query values and headers are kept (`Request.header_items`,
`Request.raw_query`), so `multiValueHeaders` and `getlist()` see every value.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, quote

from isolation.contract import JSON_TYPE, Request, Response, problem


class Interface(StrEnum):
    """`spec.function.interface`: how a request reaches the handler and its answer returns."""

    NEST = "nest"
    APIGATEWAY_V1 = "apigateway-v1"
    APIGATEWAY_V2 = "apigateway-v2"
    ASGI = "asgi"
    WSGI = "wsgi"


class MalformedResponse(ValueError):
    """An answer the interface cannot turn into HTTP — for API Gateway what it would refuse
    itself (its 502 'Malformed Lambda proxy response'); the message says what is wrong."""


_MALFORMED_TITLES = {
    Interface.APIGATEWAY_V1: "Malformed Lambda proxy response",
    Interface.APIGATEWAY_V2: "Malformed Lambda proxy response",
    Interface.WSGI: "Malformed WSGI response",
    Interface.ASGI: "Malformed ASGI response",
}


def malformed(interface: Interface, exc: MalformedResponse) -> Response:
    """The 502 problem+json for an answer the interface refused, naming what is wrong: the
    function ran, but what it returned is not an HTTP response (a gateway error, as AWS's)."""
    return problem(502, _MALFORMED_TITLES.get(interface, "Malformed response"), str(exc))


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


def raw_path(request: Request) -> str:
    """The path as sent, percent-escapes kept (re-encoded from `path` when not known)."""
    return request.raw_path or quote(request.path, safe="/:@!$&'()*+,;=~")


def raw_query(request: Request) -> str:
    if request.raw_query or not request.query:
        return request.raw_query
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in request.query.items())


def header(request: Request, name: str, default: str = "") -> str:
    """The first value of header `name` (case-insensitive), or `default`."""
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
    if _is_text(header(request, "content-type")):
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
        "domainName": header(request, "host", "localhost"),
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
                "userAgent": header(request, "user-agent") or None,
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
                "path": raw_path(request),
                "protocol": "HTTP/1.1",
                "sourceIp": request.client or "127.0.0.1",
                "userAgent": headers.get("user-agent", ""),
            },
        }
    )
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path(request),
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

"""The runtime's data plane: invocations and HTTP triggers, signed by the gateway, answered
whole or streamed; /healthz and /metrics.

Why a module of its own: this is the hot path every invocation takes, and the one place where
an HTTP request becomes the `isolation.contract.Request` both isolation modes get (the raw
query, every header in order, the mount prefix and client from the gateway's forwarding headers,
trusted only when the signature covers them) and where an answer goes back whole or chunk by
chunk. `sandbox.runtime` serves it beside the control API.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiohttp import web
from multidict import CIMultiDict

from isolation.contract import Headers, Request
from isolation.errors import IsolationError
from isolation.streams import BodyStream
from sandbox import dataplane_auth as auth
from sandbox import limits
from sandbox.api import ErrorBody, SandboxInfo
from sandbox.disconnects import cancelled_if_caller_leaves
from sandbox.errors import http_error
from sandbox.limits import DEFAULT_LIMITS, BodyLimits
from sandbox.service import Runtime

log = logging.getLogger("nest.runtime")
JSON = "application/json"
RUNTIME_KEY = web.AppKey("runtime", Runtime)
KEYS_KEY: web.AppKey[auth.KeySource | None] = web.AppKey("dataplane_keys")
LIMITS_KEY = web.AppKey("body_limits", BodyLimits)


def error_response(
    status: int, error: str, message: str, sandbox: SandboxInfo | None = None
) -> web.Response:
    body = ErrorBody(error=error, message=message, sandbox=sandbox)
    return web.Response(status=status, text=body.model_dump_json(), content_type=JSON)


def _unauthorized(reason: str) -> web.Response:
    response = error_response(401, "Unauthorized", f"data-plane request refused: {reason}")
    response.headers["WWW-Authenticate"] = auth.CHALLENGE
    return response


def _forwarded_to(headers: Mapping[str, str], peer: str | None) -> tuple[str, str | None]:
    """(root_path, client) from the gateway's forwarding headers, which `invoke` trusts only
    signed: the mount prefix, and the last X-Forwarded-For hop (the address the gateway saw)."""
    prefix = headers.get("X-Forwarded-Prefix", "").rstrip("/")
    hops = headers.get("X-Forwarded-For", "")
    client = hops.rsplit(",", 1)[-1].strip() if hops else (peer or "")
    return (prefix if prefix.startswith("/") else ""), client


class _Invoker:
    """The invocation handlers, bound once to the runtime, its keys and its body limits: read
    from the request's application they cost three property chains and lookups per call."""

    __slots__ = ("keys", "limits", "runtime")

    def __init__(
        self, runtime: Runtime, keys: auth.KeySource | None, body_limits: BodyLimits
    ) -> None:
        self.runtime = runtime
        self.keys = keys
        self.limits = body_limits

    async def invoke(
        self, request: web.Request, path: str = "/", raw_path: str = "/"
    ) -> web.StreamResponse:
        """POST /v1/sandboxes/{id}/invoke as it is; an HTTP trigger with its path."""
        keys = self.keys
        body_limits = self.limits
        sandbox_id = request.match_info["id"]
        headers = request.headers
        fwd = auth.forwarded(headers, headers.items())  # '' unless X-Forwarded-* came: 4 lookups
        # Inline, not a middleware (see data_app); the header is checked before the body is
        # read, the body's nesting only once the signature holds (a deep scan costs CPU).
        try:
            if keys is not None:
                signed = keys.parse(headers.get(auth.HEADER))
                if isinstance(signed, str):
                    return _unauthorized(signed)
                body = await limits.read_body(request, body_limits)
                if not keys.check(signed, request.method, request.raw_path, sandbox_id, body, fwd):
                    return _unauthorized(auth.BAD_SIGNATURE)
            else:
                body = await limits.read_body(request, body_limits)
            if len(body) > body_limits.max_depth:  # shorter cannot nest deeper: nothing to scan
                await limits.check_body_async(body, body_limits)
        except limits.BodyRefused as exc:  # never reaches the sandbox, which lives on
            return limits.problem_response(exc, request.path)
        # The signature covered the forwarding headers, so they are the gateway's own.
        # Without them the caller is not the gateway (a test, a benchmark): no client to name.
        root_path, client = _forwarded_to(headers, request.remote) if fwd else ("", "")
        # aiohttp's read-only multidict views are Mappings already (case-insensitive headers,
        # even), and its items view keeps every header in order: copying them would cost more
        # than the rest of the runtime's work per call. The subprocess channel carries the same.
        call = Request(
            request.method, path, request.query, headers, body, request.rel_url.raw_query_string,
            headers.items(), root_path, client or "", raw_path,
        )  # fmt: skip
        try:
            response = await self.runtime.invoke(sandbox_id, call)
        except IsolationError as exc:
            status, word, message = http_error(exc)
            return error_response(status, word, message)
        body = response.body
        if type(body) is bytes:
            return web.Response(status=response.status, headers=response.headers, body=body)
        return await _stream(request, response.status, response.headers, body)

    async def http_trigger(self, request: web.Request) -> web.StreamResponse:
        raw_path = trigger_path(request.raw_path, request.match_info["id"])
        return await self.invoke(request, "/" + request.match_info["path"], raw_path)


async def _stream(
    request: web.Request, status: int, headers: Headers, body: BodyStream
) -> web.StreamResponse:
    """A streamed answer, each chunk written as it comes (chunked encoding, no buffering).
    Cut short — the function's error, a bound of isolation.streams — the connection is closed
    without the last chunk, so the caller sees an incomplete answer, never a complete-looking
    one; a caller that leaves stops the stream at once, not at its next chunk (the wait for
    it is cancelled: sandbox.disconnects), and the function is told (see the backends)."""
    response = web.StreamResponse(status=status, headers=CIMultiDict(headers))
    try:
        async with cancelled_if_caller_leaves(request):
            await response.prepare(request)
            async for chunk in body:
                await response.write(chunk)
    except ConnectionError:  # the caller left (CallerLeft: while we waited on the function)
        return response
    except Exception as exc:  # StreamTimeout, StreamFailed, or the function's own error
        log.warning("stream of %s cut short: %s", request.match_info["id"], exc)
        if request.transport is not None:
            request.transport.close()
        return response
    finally:
        await body.aclose()
    await response.write_eof()
    return response


def trigger_path(raw: str, sandbox_id: str) -> str:
    """The function's path as sent, escapes kept: what follows /v1/sandboxes/{id}/http."""
    raw = raw.split("?", 1)[0]
    prefix = f"/v1/sandboxes/{sandbox_id}/http"
    if raw.startswith(prefix):
        return raw[len(prefix) :] or "/"
    return ""  # an id that was escaped in the path: interfaces re-encode the decoded path


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def metrics(request: web.Request) -> web.Response:
    """Signed like an invocation (sandbox ''): the exposition lists every sandbox's UID."""
    keys = request.app[KEYS_KEY]
    if keys is not None:
        denied = keys.verify(request.headers.get(auth.HEADER), "GET", request.raw_path, "", b"")
        if denied is not None:
            return _unauthorized(denied)
    runtime = request.app[RUNTIME_KEY]
    return web.Response(
        body=runtime.metrics.exposition(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


def data_app(
    runtime: Runtime, keys: auth.KeySource | None, body_limits: BodyLimits = DEFAULT_LIMITS
) -> web.Application:
    """`keys` None: unsigned requests are served (--insecure-dataplane)."""
    # No middleware on the hot path: aiohttp rebuilds the handler chain for every request.
    # aiohttp refuses bodies longer than client_max_size: a body of exactly the limit passes.
    app = web.Application(client_max_size=body_limits.max_bytes)
    app[RUNTIME_KEY] = runtime
    app[KEYS_KEY] = keys
    app[LIMITS_KEY] = body_limits
    invoker = _Invoker(runtime, keys, body_limits)
    app.router.add_post("/v1/sandboxes/{id}/invoke", invoker.invoke)
    app.router.add_route("*", "/v1/sandboxes/{id}/http/{path:.*}", invoker.http_trigger)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app

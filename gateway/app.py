"""The gateway's HTTP server: handlers for the route table, problem JSON, health and metrics.

Each operation is `authorize → parse → call the API server → convert`, with the deciding done
in `nest_api.convert`, `gateway.auth` and `gateway.invoke`; this module only moves bytes. Every
failure leaves as an RFC 7807 problem (the middleware maps typed errors, aiohttp's own 404/405/
413, and — as a bug report — anything unexpected), so clients never have to parse HTML errors.
Every body, management or invocation, passes `sandbox.limits` first (size and JSON nesting,
the same limits and the same problem documents as the runtime's data plane), so no body can
make a handler fail with a 500.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError

from crds import LabelSelector
from gateway import openapi
from gateway.auth import Authorizer, authorizer_for
from gateway.auth_policy import DEFAULT_OUTAGE, OutagePolicy
from gateway.contexts import RegistrySettings, Uploader
from gateway.demand import DEMAND_PATH
from gateway.errors import (
    BadRequest,
    FieldError,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    NotReady,
    UnsupportedMediaType,
    invalid,
    problem,
)
from gateway.invoke import Invoker, Metrics, caller_of, invoke_call, mounted_path, trigger_call
from gateway.kube import Kube, Obj
from gateway.routes import ROUTES, Route
from nest_api import convert
from nest_api import models as m
from nest_kube import Api, Informer
from nest_kube.resources import SANDBOX_DEPLOYMENTS, SANDBOX_ENDPOINTS
from sandbox import dataplane_auth, limits
from sandbox.limits import DEFAULT_LIMITS, BodyLimits

log = logging.getLogger(__name__)
Handler = Callable[[web.Request, str, str, Any], Awaitable[web.StreamResponse]]
_LABEL = re.compile(m.DNS_LABEL_PATTERN)
# aiohttp's default `{name}` would also swallow ":invoke" and ":undo"; names never contain ':'.
NO_REGISTRY_FLAGS = RegistrySettings()  # the cluster's announced registry
_AIOHTTP_VARS = {"{name}": "{name:[^/:]+}", "{path}": "{path:.*}"}


@dataclass(frozen=True)
class Options:
    auth: bool = True
    queue_size: int = 100
    activation_timeout: float = 30.0
    auth_cache_seconds: float = 10.0
    auth_outage: OutagePolicy = DEFAULT_OUTAGE  # when the API server cannot review (auth_policy)
    limits: BodyLimits = DEFAULT_LIMITS  # the runtimes' must be the same (flags of both)
    dataplane_key_file: str | None = None  # None: forward unsigned (insecure runtimes only)
    registry: RegistrySettings = NO_REGISTRY_FLAGS  # where build contexts are stored


def problem_response(error: GatewayError, path: str) -> web.Response:
    found = problem(error, path)
    return web.Response(
        status=found.status,
        text=json.dumps(found.body),
        content_type="application/problem+json",
        headers=found.headers,
    )


@web.middleware
async def problems(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        return problem_response(exc, request.path)
    except limits.BodyRefused as exc:
        return limits.problem_response(exc, request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        mapped: GatewayError
        if exc.status == 404:
            mapped = NotFound(f"no operation at {request.path}; see /openapi.json")
        elif exc.status == 405:
            mapped = MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
        elif exc.status == 413:  # a handler that read the body without limits.read_body
            too_large = limits.too_large(request.app[OPTIONS_KEY].limits)
            return limits.problem_response(too_large, request.path)
        else:
            mapped = BadRequest(exc.text or exc.reason)
        return problem_response(mapped, request.path)
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return problem_response(
            GatewayError("unexpected error; see the gateway's log"), request.path
        )


def _json(model: BaseModel, status: int = 200) -> web.Response:
    text = model.model_dump_json(by_alias=True, exclude_none=True)
    return web.Response(status=status, text=text, content_type="application/json")


def _param(request: web.Request, name: str) -> str:
    value = request.match_info.get(name, "")
    if len(value) > m.DNS_LABEL_MAX or not _LABEL.match(value):
        raise BadRequest(
            f"path parameter {name} {value!r} is not a valid name (RFC 1123 label)",
            [FieldError(name, "must be lower-case alphanumerics and '-', at most 63")],
        )
    return value


async def _body(request: web.Request, model: type[BaseModel], body: BodyLimits) -> BaseModel:
    """The validated body; too large 413, too deep or not JSON 400 (`sandbox.limits`)."""
    if request.content_type not in ("application/json", "application/octet-stream") and (
        request.headers.get("Content-Type")
    ):
        raise UnsupportedMediaType(f"send application/json, not {request.content_type}")
    raw = await limits.read_body(request, body)
    data = await limits.decode_json_async(raw, body) if raw else None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc, "body") from exc


def _selector(deployment: Obj) -> str:
    return LabelSelector.model_validate(deployment["spec"]["selector"]).to_selector_string()


class Gateway:
    """The handlers, bound to one cluster connection and one routing state."""

    def __init__(
        self,
        kube: Kube,
        invoker: Invoker,
        authorizer: Authorizer | None,
        body_limits: BodyLimits = DEFAULT_LIMITS,
        uploader: Uploader | None = None,
    ) -> None:
        self.kube = kube
        self.invoker = invoker
        self.authorizer = authorizer
        self.limits = body_limits
        self.uploader = uploader or Uploader(kube, RegistrySettings())
        self.handlers: dict[str, Handler] = {
            "uploadContext": self.upload_context,
            "createFunction": self.create_function,
            "listFunctions": self.list_functions,
            "getFunction": self.get_function,
            "replaceFunction": self.replace_function,
            "deleteFunction": self.delete_function,
            "getScale": self.get_scale,
            "replaceScale": self.replace_scale,
            "getRolloutStatus": self.rollout_status,
            "undoRollout": self.undo_rollout,
            "listSandboxes": self.list_sandboxes,
            "getEndpoints": self.get_endpoints,
            "invokeFunction": self.invoke,
            "httpTrigger": self.http_trigger,
        }

    def handler(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        impl = self.handlers[route.operation_id]

        async def handle(request: web.Request) -> web.StreamResponse:
            ns = _param(request, "namespace")
            name = _param(request, "name") if "{name}" in route.path else ""
            if self.authorizer is not None:
                header = request.headers.get("Authorization")
                await self.authorizer.authorize(header, route.access, ns, name or None)
            body = None if route.body is None else await _body(request, route.body, self.limits)
            return await impl(request, ns, name, body)

        return handle

    async def _view(self, ns: str, deployment: Obj, status: int = 200) -> web.Response:
        name = deployment["metadata"]["name"]
        endpoints = await self.kube.get_endpoints(ns, name)
        replicasets = await self.kube.list_replicasets(ns, _selector(deployment))
        return _json(convert.function_view(deployment, endpoints, replicasets), status)

    async def upload_context(self, request: web.Request, ns: str, _: str, __: Any) -> web.Response:
        return _json(await self.uploader.upload(request, ns), 201)

    async def create_function(self, _: web.Request, ns: str, __: str, body: Any) -> web.Response:
        deployment = convert.deployment_for(ns, body)
        created = await self.kube.create_deployment(ns, deployment.to_k8s())
        return _json(convert.function_view(created, None), 201)

    async def list_functions(self, _: web.Request, ns: str, __: str, ___: Any) -> web.Response:
        deployments = await self.kube.list_deployments(ns)
        endpoints = {e["metadata"]["name"]: e for e in await self.kube.list_endpoints(ns)}
        items = [
            convert.function_view(d, endpoints.get(d["metadata"]["name"]))
            for d in sorted(deployments, key=lambda d: str(d["metadata"]["name"]))
        ]
        return _json(m.FunctionList(items=items))

    async def get_function(self, _: web.Request, ns: str, name: str, __: Any) -> web.Response:
        return await self._view(ns, await self.kube.get_deployment(ns, name))

    async def replace_function(self, _: web.Request, ns: str, name: str, body: Any) -> web.Response:
        stored = await self.kube.get_deployment(ns, name)
        replaced = await self.kube.replace_deployment(
            ns, name, convert.updated_deployment(stored, body)
        )
        return await self._view(ns, replaced)

    async def delete_function(self, _: web.Request, ns: str, name: str, __: Any) -> web.Response:
        await self.kube.delete_deployment(ns, name)
        return web.Response(status=204)

    async def get_scale(self, _: web.Request, ns: str, name: str, __: Any) -> web.Response:
        return _json(convert.scale_view(await self.kube.get_scale(ns, name)))

    async def replace_scale(self, _: web.Request, ns: str, name: str, body: Any) -> web.Response:
        patched = await self.kube.patch_scale(ns, name, body.replicas)
        return _json(convert.scale_view(patched))

    async def rollout_status(self, _: web.Request, ns: str, name: str, __: Any) -> web.Response:
        return _json(convert.rollout_status(await self.kube.get_deployment(ns, name)))

    async def undo_rollout(self, _: web.Request, ns: str, name: str, body: Any) -> web.Response:
        deployment = await self.kube.get_deployment(ns, name)
        replicasets = await self.kube.list_replicasets(ns, _selector(deployment))
        template, _revision = convert.undo_template(deployment, replicasets, body.to_revision)
        updated = {**deployment, "spec": {**deployment["spec"], "template": template}}
        return await self._view(ns, await self.kube.replace_deployment(ns, name, updated))

    async def list_sandboxes(self, _: web.Request, ns: str, name: str, __: Any) -> web.Response:
        deployment = await self.kube.get_deployment(ns, name)
        items = await self.kube.list_sandboxes(ns, _selector(deployment))
        return _json(convert.sandbox_items(items))

    async def get_endpoints(self, _: web.Request, ns: str, name: str, __: Any) -> web.Response:
        await self.kube.get_deployment(ns, name)  # 404 for an unknown function
        found = await self.kube.get_endpoints(ns, name) or {}
        view = {"name": name, "namespace": ns, "status": found.get("status") or {}}
        return _json(convert.parse(m.Endpoints, view, "SandboxEndpoints"))

    async def _event(self, request: web.Request) -> bytes:
        """The body to forward, refused here as the runtime would refuse it (no round trip)."""
        body = await limits.read_body(request, self.limits)
        await limits.check_body_async(body, self.limits)
        return body

    async def invoke(self, request: web.Request, ns: str, name: str, _: Any) -> web.StreamResponse:
        call = invoke_call(request.headers, await self._event(request), caller_of(request))
        return await self.invoker.invoke((ns, name), call, request)

    async def http_trigger(
        self, request: web.Request, ns: str, name: str, _: Any
    ) -> web.StreamResponse:
        prefix = f"/fn/{ns}/{name}"
        call = trigger_call(
            request.method, request.match_info.get("path", ""), request.rel_url.raw_query_string,
            request.headers, await self._event(request), strip_auth=self.authorizer is not None,
            caller=caller_of(request, prefix), raw_path=mounted_path(request.raw_path, prefix),
        )  # fmt: skip
        return await self.invoker.invoke((ns, name), call, request)


GATEWAY_KEY = web.AppKey("gateway", Gateway)
OPTIONS_KEY = web.AppKey("options", Options)
INFORMERS_KEY = web.AppKey("informers", list)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)


def add_routes(app: web.Application, gateway: Gateway) -> None:
    for route in ROUTES:
        path = route.path
        for var, pattern in _AIOHTTP_VARS.items():
            path = path.replace(var, pattern)
        handle = gateway.handler(route)
        if route.passthrough and len(route.methods) > 1:
            app.router.add_route("*", path, handle)
            app.router.add_route("*", path.removesuffix("/{path:.*}"), handle)
            continue
        for method in route.methods:
            app.router.add_route(method.upper(), path, handle)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _readyz(request: web.Request) -> web.Response:
    if all(informer.synced.is_set() for informer in request.app[INFORMERS_KEY]):
        return web.Response(text="ok")
    return problem_response(NotReady("routing state not yet synced"), request.path)


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def api_app(gateway: Gateway, options: Options) -> web.Application:
    """The operations of the route table behind the problem middleware, without the watches
    (tests serve it in-process with a routing state of their own)."""
    # aiohttp refuses bodies longer than client_max_size: a body of exactly the limit passes.
    app = web.Application(middlewares=[problems], client_max_size=options.limits.max_bytes)
    app[OPTIONS_KEY] = options
    app[GATEWAY_KEY] = gateway
    add_routes(app, gateway)
    return app


def create_app(api: Api, options: Options) -> web.Application:
    """The gateway application on `api` (`nest_kube.HttpApi`, or a fake in tests); its watches,
    its API session and its data-plane client live as long as it runs."""
    registry = CollectorRegistry()
    kube = Kube(api)
    key_file = options.dataplane_key_file
    keys = dataplane_auth.KeySource(key_file) if key_file else None  # raises: no key, no gateway
    invoker = Invoker(kube, Metrics(registry), options.queue_size, options.activation_timeout, keys)
    outage = options.auth_outage
    authorizer = authorizer_for(api, options.auth_cache_seconds, outage) if options.auth else None
    uploader = Uploader(kube, options.registry)
    gateway = Gateway(kube, invoker, authorizer, options.limits, uploader)
    app = api_app(gateway, options)
    app[REGISTRY_KEY] = registry
    app[INFORMERS_KEY] = []
    document = openapi.document()
    docs = openapi.docs_html(document)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await invoker.open()
        deployments = Informer(api, SANDBOX_DEPLOYMENTS)  # cluster-wide: every function
        deployments.add_handler(lambda d: invoker.on_deployment(d.type, d.obj))
        endpoints = Informer(api, SANDBOX_ENDPOINTS)
        endpoints.add_handler(lambda d: invoker.on_endpoints(d.type, d.obj))
        informers = [deployments, endpoints]
        app[INFORMERS_KEY].extend(informers)
        for informer in informers:
            informer.start()
        yield
        for informer in informers:
            await informer.stop()
        await invoker.close()
        await api.close()

    async def serve_openapi(request: web.Request) -> web.Response:
        return web.json_response(document)

    async def serve_docs(request: web.Request) -> web.Response:
        return web.Response(text=docs, content_type="text/html")

    async def end_streams(app: web.Application) -> None:
        invoker.demand.close()

    app.cleanup_ctx.append(lifecycle)
    if authorizer is not None:
        app.cleanup_ctx.append(authorizer.lifecycle)  # the issuer keys, kept for outages
    app.on_shutdown.append(end_streams)
    # The autoscaler's demand stream: operator-facing (signed), not in the OpenAPI document.
    app.router.add_get(DEMAND_PATH, invoker.demand.handle)
    app.router.add_get("/openapi.json", serve_openapi)
    app.router.add_get("/docs", serve_docs)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app

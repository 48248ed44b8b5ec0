"""Build contexts through the gateway: the upload route, the registry it picks, `code.build`
and the function view's build, decided without a cluster.

The upload is served in-process on 127.0.0.1 in front of a real registry process; the registry
announcement is a ConfigMap in a fake API server, as `nest cluster up` publishes it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from crds import SandboxDeployment
from gateway.app import Gateway, Options, api_app
from gateway.contexts import RegistrySettings, Uploader, chosen_hosting
from gateway.invoke import Invoker, Metrics
from gateway.kube import Kube
from gateway.main import build_parser
from gateway.routes import ROUTES
from nest_api import convert
from nest_api import models as m
from nest_kube.fake import FakeApi
from nest_kube.resources import CONFIGMAPS
from sandbox.context import pull_context
from sandbox.hosting import HOSTING_KEY, RegistryHosting
from sandbox.layers import Reference
from tests.archives import tar_gz
from tests.loopback_registry import registry  # noqa: F401

NS = "team-a"
URL = f"/v1/namespaces/{NS}/contexts"
GZIP = {"Content-Type": "application/gzip"}
CONTEXT = f"127.0.0.1:5000/nest/{NS}@sha256:{'c' * 64}"
PACKAGE = f"127.0.0.1:5000/nest/{NS}@sha256:{'d' * 64}"


CODE = tar_gz({"main.py": "import six\n", "requirements.txt": "six\n"})
Serve = Callable[..., Any]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a gateway (no auth) on a fake API server; `announce` publishes a registry."""
    started: list[TestClient[Any, Any]] = []

    async def start(
        settings: RegistrySettings | None = None, announce: str | None = None, max_bytes: int = 0
    ) -> TestClient[Any, Any]:
        api = FakeApi()
        if announce is not None:
            doc = f"host: {announce}\nhostFromClusterNetwork: {announce}\n"
            api.put(CONFIGMAPS, {
                "metadata": {"name": "local-registry-hosting", "namespace": "kube-public"},
                "data": {HOSTING_KEY: doc},
            })  # fmt: skip
        kube = Kube(api)
        uploader = Uploader(kube, settings or RegistrySettings())
        if max_bytes:
            uploader.max_bytes = max_bytes
        invoker = Invoker(kube, Metrics(CollectorRegistry()), 10, 1.0)
        options = Options(auth=False)
        app = api_app(Gateway(kube, invoker, None, options.limits, uploader), options)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        started.append(client)
        return client

    yield start
    for client in started:
        await client.close()


async def test_an_upload_is_stored_in_the_announced_registry(
    serve: Serve,
    registry: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    gateway = await serve(announce=registry)
    resp = await gateway.post(URL, data=CODE, headers=GZIP)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert (body["files"], body["bytes"]) == (2, len(CODE))
    ref = Reference.parse(body["context"])
    assert (ref.registry, ref.repository) == (registry, f"nest/{NS}")
    assert pull_context(body["context"], tmp_path / "out") == 2


async def test_the_flags_name_the_registry_and_the_pull_host(
    serve: Serve,
    registry: str,  # noqa: F811
) -> None:
    settings = RegistrySettings(host=registry, pull_host="registry.nest-system:5000")
    gateway = await serve(settings, announce="elsewhere.example:1")
    body = await (await gateway.post(URL, data=CODE, headers=GZIP)).json()
    assert body["context"].startswith(f"registry.nest-system:5000/nest/{NS}@sha256:")


async def test_without_a_registry_the_problem_names_the_flag(serve: Serve) -> None:
    gateway = await serve()
    resp = await gateway.post(URL, data=CODE, headers=GZIP)
    assert resp.status == 503
    problem = await resp.json()
    assert problem["type"].endswith("/not-configured") and "--registry" in problem["detail"]


async def test_a_bad_archive_is_a_400_naming_the_entry(
    serve: Serve,
    registry: str,  # noqa: F811
) -> None:
    gateway = await serve(announce=registry)
    resp = await gateway.post(URL, data=tar_gz({"a.py": "", "up": "->../.."}), headers=GZIP)
    assert resp.status == 400
    problem = await resp.json()
    assert "'up' is a link" in problem["detail"]
    assert problem["errors"][0]["field"] == "body:up"
    resp = await gateway.post(URL, data=b"not gzip", headers=GZIP)
    assert resp.status == 400 and "not gzip-compressed" in (await resp.json())["detail"]


async def test_size_and_media_type_are_checked(
    serve: Serve,
    registry: str,  # noqa: F811
) -> None:
    gateway = await serve(announce=registry, max_bytes=len(CODE) - 1)
    resp = await gateway.post(URL, data=CODE, headers=GZIP)
    assert resp.status == 413
    assert (await resp.json())["type"].endswith("/payload-too-large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        yield CODE[:10]
        yield CODE[10:]

    resp = await gateway.post(URL, data=chunks(), headers=GZIP)
    assert resp.status == 413
    resp = await gateway.post(URL, data=CODE, headers={"Content-Type": "application/json"})
    assert resp.status == 415


def test_flags_win_over_the_announcement() -> None:
    announced = RegistryHosting("127.0.0.1:5000", "registry.local:5000")
    assert chosen_hosting(RegistrySettings(), announced) == announced
    assert chosen_hosting(RegistrySettings(), None) is None
    assert chosen_hosting(RegistrySettings("r:1"), announced) == RegistryHosting("r:1", "r:1")
    renamed = chosen_hosting(RegistrySettings(pull_host="p:2"), announced)
    assert renamed == RegistryHosting("127.0.0.1:5000", "p:2")


def test_registry_flags_have_environment_fallbacks() -> None:
    env = {"NEST_GATEWAY_REGISTRY": "r:1", "NEST_GATEWAY_REGISTRY_CREDENTIALS": "/c.json"}
    args = build_parser(env).parse_args([])
    assert (args.registry, args.registry_pull_host, args.registry_credentials) == (
        "r:1", None, "/c.json",
    )  # fmt: skip


def test_the_upload_route_needs_create_on_functions_and_takes_gzip() -> None:
    route = next(r for r in ROUTES if r.operation_id == "uploadContext")
    assert (route.access.verb, route.access.resource, route.access.named) == (
        "create", "sandboxdeployments", False,
    )  # fmt: skip
    assert route.upload == "application/gzip" and route.status == 201 and 413 in route.errors


def _request(**code: Any) -> m.FunctionCreate:
    return m.FunctionCreate.model_validate({"name": "fn", "handler": "main:handler", **code})


def test_code_build_becomes_the_templates_source() -> None:
    request = _request(code={"build": {"context": CONTEXT, "pullSecret": "regcred"}})
    deployment = convert.deployment_for(NS, request)
    source = deployment.spec.template.spec.function.source
    assert source.build is not None
    assert (source.build.context, source.build.pull_secret) == (CONTEXT, "regcred")
    with pytest.raises(ValueError, match="context"):
        _request(code={"build": {"context": "127.0.0.1:5000/nest/x:latest"}})


def _stored(status: dict[str, Any]) -> dict[str, Any]:
    deployment = convert.deployment_for(NS, _request(code={"build": {"context": CONTEXT}}))
    return {**deployment.to_k8s(), "status": status}


def _condition(status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": "Built", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-12-01T00:00:00Z"}  # fmt: skip


def test_the_view_shows_the_build_from_the_status_and_the_built_condition() -> None:
    view = convert.function_view(_stored({}), None)
    assert view.build is not None
    assert (view.build.status, view.build.reason, view.build.ref) == ("Unknown", None, None)
    assert view.build.context == CONTEXT

    building = _stored({
        "conditions": [_condition("Unknown", "Building", "job fn-build-x running")],
        "build": {"context": CONTEXT, "job": "fn-build-x"},
    })  # fmt: skip
    view = convert.function_view(building, None)
    assert view.build is not None
    assert (view.build.status, view.build.reason, view.build.job) == (
        "Unknown", "Building", "fn-build-x",
    )  # fmt: skip

    done = _stored({
        "conditions": [_condition("True", "Succeeded", f"built {PACKAGE}")],
        "build": {"context": CONTEXT, "ref": PACKAGE, "job": "fn-build-x"},
    })  # fmt: skip
    view = convert.function_view(done, None)
    assert view.build is not None and (view.build.status, view.build.ref) == ("True", PACKAGE)
    wire = json.loads(view.model_dump_json(by_alias=True, exclude_none=True))
    assert wire["build"] == {
        "status": "True", "reason": "Succeeded", "message": f"built {PACKAGE}",
        "context": CONTEXT, "ref": PACKAGE, "job": "fn-build-x",
    }  # fmt: skip


def test_a_build_of_an_older_context_is_not_shown_as_this_ones() -> None:
    old = f"127.0.0.1:5000/nest/{NS}@sha256:{'e' * 64}"
    stale = _stored({
        "conditions": [_condition("True", "Succeeded", f"built {PACKAGE}")],
        "build": {"context": old, "ref": PACKAGE, "job": "fn-build-old"},
    })  # fmt: skip
    view = convert.function_view(stale, None)
    assert view.build is not None and view.build.ref is None and view.build.job is None
    # Nor its condition: True Succeeded is the older context's; this one has not started.
    assert (view.build.status, view.build.reason, view.build.message) == (
        "Unknown", None, "waiting for the build to start",
    )  # fmt: skip


def test_functions_without_a_build_have_no_build_view() -> None:
    inline = convert.deployment_for(NS, _request(files={"main.py": "x = 1\n"}))
    stored = SandboxDeployment.model_validate(inline.to_k8s()).to_k8s()
    assert convert.function_view(stored, None).build is None

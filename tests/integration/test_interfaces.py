"""Real web frameworks from PyPI, unmodified, deployed as users deploy them and called through
the gateway's HTTP trigger.

Each app is a directory of tests/apps (its module and a requirements.txt pinning real PyPI
packages): FastAPI (ASGI), Flask (WSGI), a Mangum-wrapped FastAPI app (apigateway-v2) and an
aws-lambda-powertools APIGatewayRestResolver app (apigateway-v1). `nest deploy DIR --interface
...` builds its dependency layer with pip for the pool's interpreter, pushes the layers to the
cluster's registry and deploys the function by digest (`source.oci`); the test then calls
/fn/{namespace}/{name}/... as a browser or an HTTP client would, and each app must answer exactly
as on its home platform. The builder's cache lives in ~/.cache/nest/test-apps (NEST_TEST_APPS_CACHE
names another): pip runs once per requirements file, later runs reuse the layer (pip's own cache
keeps the wheels should the layer be rebuilt).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.test_gateway import (  # noqa: F401 - fixtures used by name
    Client,
    developer,
    gateway_url,
    operator_active,
)
from tests.kube import Kubectl, wait_for

APPS = Path(__file__).resolve().parents[1] / "apps"
BUILD_CACHE = Path(os.environ.get("NEST_TEST_APPS_CACHE", Path.home() / ".cache/nest/test-apps"))
Deploy = Callable[..., str]


@pytest.fixture(autouse=True)
def with_operator(operator_active: bool) -> None:  # noqa: F811
    if not operator_active:
        pytest.skip("waits for the operator (deploy/operator/ or `nest operator run`)")


@pytest.fixture
def deploy(
    kubeconfig: Path,
    kubectl: Kubectl,
    developer: Client,  # noqa: F811
) -> Deploy:
    """`nest deploy tests/apps/APP --interface ...` into the test's namespace, as a user runs
    it; waits until the function answers through the gateway and returns its trigger's URL."""
    env = {**os.environ, "NEST_KUBECONFIG": str(kubeconfig), "NEST_CACHE_DIR": str(BUILD_CACHE)}
    env.pop("NEST_REGISTRY", None)  # the registry the cluster announces

    def run(
        app: str, interface: str, handler: str, isolation: str = "subprocess",
        name: str | None = None,
    ) -> str:  # fmt: skip
        name = name or app
        argv = [sys.executable, "-m", "nest", "deploy", str(APPS / app), "--name", name,
                "--interface", interface, "--handler", handler, "--isolation", isolation,
                "--memory", "256Mi", "--replicas", "1", "--timeout", "180",
                "-n", kubectl.namespace]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr}{proc.stdout}"
        # Built into layers and deployed by digest, not sent inline.
        assert "package: dependency layer sha256:" in proc.stderr, proc.stderr
        refs = re.findall(r"\((\S+@sha256:[0-9a-f]{64})\)", proc.stderr)
        assert refs, proc.stderr
        function = kubectl.json("get", "sbxd", name)["spec"]["template"]["spec"]["function"]
        assert function["source"] == {"oci": {"ref": refs[-1]}}
        assert function["interface"] == interface
        base = f"{developer.base}/fn/{developer.ns}/{name}"

        def up() -> bool:
            # Held by the activator until a sandbox is ready; 504 while it imports its framework.
            resp = developer.request("GET", base + "/__nest_probe__")
            assert resp.status_code not in (500, 502), resp.text
            return resp.status_code not in (503, 504)

        wait_for(up, timeout=180, what=f"{name} to answer through the gateway")
        return base

    return run


def get(developer: Client, url: str, **kw: Any) -> requests.Response:  # noqa: F811
    return developer.request("GET", url, **kw)


def test_fastapi_app_path_query_validation_and_json_body(
    developer: Client,  # noqa: F811
    deploy: Deploy,
) -> None:
    base = deploy("fastapi", "asgi", "main:app")
    resp = get(developer, f"{base}/items/42", params=[("q", "x y"), ("tag", "a"), ("tag", "b")])
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"item_id": 42, "q": "x y", "tag": ["a", "b"]}
    invalid = get(developer, f"{base}/items/forty-two")
    assert invalid.status_code == 422, invalid.text
    assert invalid.json()["detail"][0]["loc"] == ["path", "item_id"]
    made = developer.request("POST", f"{base}/items", json={"name": "pen", "price": 2.5})
    assert made.status_code == 201, made.text
    assert made.json() == {"name": "pen", "price": 2.5, "with_tax": 3.0}
    assert developer.request("POST", f"{base}/items", json={"name": "pen"}).status_code == 422
    assert get(developer, f"{base}/nowhere").status_code == 404
    host = developer.base.removeprefix("http://")
    who = get(developer, f"{base}/whoami", headers={"X-Multi": "one, two"}).json()
    assert who["host"] == host  # the caller's Host, not the pool pod's address
    assert who["root_path"] == f"/fn/{developer.ns}/fastapi"
    assert who["url"] == f"http://{host}/fn/{developer.ns}/fastapi/whoami"
    assert who["client"] == who["forwarded_for"].rsplit(",", 1)[-1].strip()
    assert who["multi"] == ["one, two"]


@pytest.mark.parametrize("isolation", ["subprocess", "namespace"])
def test_flask_app_statuses_and_mount(
    developer: Client,  # noqa: F811
    deploy: Deploy,
    isolation: str,
) -> None:
    base = deploy("flask", "wsgi", "main:app", isolation)
    resp = get(developer, f"{base}/hello/ada", params=[("tag", "a"), ("tag", "b")])
    assert resp.status_code == 200, resp.text
    host = developer.base.removeprefix("http://")
    assert resp.json() == {
        "hello": "ada", "tags": ["a", "b"], "script_root": f"/fn/{developer.ns}/flask",
        "url": f"http://{host}/fn/{developer.ns}/flask/hello/ada?tag=a&tag=b",
        "remote": resp.json()["remote"], "host": host,
    }  # fmt: skip
    brewed = developer.request("POST", f"{base}/teapot", json={"tea": "green"})
    assert brewed.status_code == 418, brewed.text
    assert brewed.json() == {"brewed": {"tea": "green"}}
    assert brewed.headers["X-Brewer"] == "flask"
    assert get(developer, f"{base}/gone").status_code == 410
    assert get(developer, f"{base}/nowhere").status_code == 404


def test_mangum_fastapi_app_as_apigateway_v2(
    developer: Client,  # noqa: F811
    deploy: Deploy,
) -> None:
    base = deploy("mangum", "apigateway-v2", "main:handler")
    resp = get(developer, f"{base}/items/7", params=[("tag", "a"), ("n", "1"), ("tag", "b")],
               cookies={"flavour": "mint"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    # The query as sent (payload 2.0's rawQueryString): from a REST API's (v1) per-name lists
    # Mangum would rebuild it as tag=a&tag=b&n=1.
    assert resp.json() == {"item_id": 7, "tag": ["a", "b"], "cookie": "mint", "path": "/items/7",
                           "query": "tag=a&n=1&tag=b"}  # fmt: skip
    assert resp.cookies.get("seen") == "7" and resp.cookies.get("again") == "yes"
    assert len(resp.raw.headers.getlist("Set-Cookie")) == 2
    invalid = get(developer, f"{base}/items/seven")
    assert invalid.status_code == 422, invalid.text


def test_powertools_resolver_as_apigateway_v1_with_its_404_and_invoke(
    developer: Client,  # noqa: F811
    deploy: Deploy,
) -> None:
    base = deploy("powertools", "apigateway-v1", "main:handler")
    resp = get(developer, f"{base}/hello/ada", params=[("q", "1"), ("tag", "a"), ("tag", "b")])
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"hello": "ada", "q": "1", "tags": ["a", "b"], "method": "GET"}
    missing = get(developer, f"{base}/nowhere")  # the resolver's own 404, not the gateway's
    assert missing.status_code == 404, missing.text
    assert missing.json() == {"statusCode": 404, "message": "Not found"}
    # A JSON event sent to :invoke reaches the Lambda interface as a POST to / with that body.
    invoked = developer.invoke("powertools", {"order": 1})
    assert invoked.status_code == 202, invoked.text
    assert invoked.json() == {"order": 1} and invoked.headers["X-Seen"] == "POST"


@contextmanager
def gate() -> Iterator[socket.socket]:
    """A shut gate on loopback: the app's stream connects after its first event and sends the
    second only once the test has accepted and written a byte."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(60)
        yield listener


@pytest.mark.parametrize("isolation", ["subprocess", "namespace"])
def test_a_streaming_response_reaches_the_caller_event_by_event(
    developer: Client,  # noqa: F811
    deploy: Deploy,
    isolation: str,
) -> None:
    with gate() as listener:
        host, port = listener.getsockname()[:2]
        base = deploy("fastapi", "asgi", "main:app", isolation, name="events")
        resp = developer.request("GET", f"{base}/events?gate={host}:{port}", stream=True)
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        chunks = resp.iter_content(chunk_size=None)  # each as it arrives
        assert next(chunks) == b"data: one\n\n"  # while the app waits at the gate
        opened, _ = listener.accept()  # the app, after its first event
        with opened:
            opened.sendall(b"go")
            assert b"".join(chunks) == b"data: two\n\n"

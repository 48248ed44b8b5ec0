"""Real web frameworks from PyPI, unmodified, through the gateway's HTTP trigger.

FastAPI (ASGI), Flask (WSGI), a Mangum-wrapped FastAPI app (apigateway-v2) and an
aws-lambda-powertools APIGatewayRestResolver app (apigateway-v1) are installed with
`pip install --target` into code directories of their own (the code directory is on the
sandbox's sys.path), deployed as `path` sources through the gateway's management API, and
called at /fn/{namespace}/{name}/... as a browser or an HTTP client would call them: each must
answer exactly as on its home platform. The wheels are downloaded from PyPI once into
~/.cache/nest/test-wheels and installed from there (no network after the first run).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
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
from tests.kube import wait_for

WHEELHOUSE = Path(os.environ.get("NEST_TEST_WHEELS", Path.home() / ".cache/nest/test-wheels"))
APPS: dict[str, tuple[list[str], str]] = {}

APPS["fastapi"] = (
    ["fastapi"],
    """
import fcntl, os

from fastapi import FastAPI, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

app = FastAPI()
GATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gate")


@app.get("/events")
def events():
    def stream():
        yield "data: one\\n\\n"
        with open(GATE) as f:  # the test holds it until it has read the first event
            fcntl.flock(f, fcntl.LOCK_SH)
        yield "data: two\\n\\n"
    return StreamingResponse(stream(), media_type="text/event-stream")


class Item(BaseModel):
    name: str
    price: float


@app.get("/items/{item_id}")
def read_item(item_id: int, q: str | None = None, tag: list[str] = Query(default=[])):
    return {"item_id": item_id, "q": q, "tag": tag}


@app.post("/items", status_code=201)
def create_item(item: Item):
    return {"name": item.name, "price": item.price, "with_tax": round(item.price * 1.2, 2)}


@app.get("/whoami")
def whoami(request: Request):
    return {"url": str(request.url), "root_path": request.scope["root_path"],
            "client": request.client.host, "host": request.headers["host"],
            "forwarded_for": request.headers.get("x-forwarded-for"),
            "multi": request.headers.getlist("x-multi")}
""",
)
APPS["flask"] = (
    ["flask"],
    """
from flask import Flask, abort, jsonify, request

app = Flask(__name__)


@app.get("/hello/<name>")
def hello(name):
    return jsonify(hello=name, tags=request.args.getlist("tag"), url=request.url,
                   script_root=request.script_root, remote=request.remote_addr,
                   host=request.host)


@app.post("/teapot")
def teapot():
    return jsonify(brewed=request.get_json()), 418, {"X-Brewer": "flask"}


@app.get("/gone")
def gone():
    abort(410)
""",
)
APPS["mangum"] = (
    ["fastapi", "mangum"],
    """
from fastapi import FastAPI, Query, Request, Response
from mangum import Mangum

app = FastAPI()


@app.get("/items/{item_id}")
def read_item(item_id: int, request: Request, response: Response,
              tag: list[str] = Query(default=[])):
    response.set_cookie("seen", str(item_id))
    response.set_cookie("again", "yes")
    return {"item_id": item_id, "tag": tag, "cookie": request.cookies.get("flavour"),
            "path": request.url.path}


handler = Mangum(app, lifespan="off")
""",
)
APPS["powertools"] = (
    ["aws-lambda-powertools"],
    """
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response

app = APIGatewayRestResolver()


@app.get("/hello/<name>")
def hello(name):
    event = app.current_event
    return {"hello": name, "q": event.get_query_string_value("q"),
            "tags": (event.multi_value_query_string_parameters or {}).get("tag"),
            "method": event.http_method}


@app.post("/")
def root():
    return Response(202, "application/json", app.current_event.body,
                    headers={"X-Seen": app.current_event.http_method})


def handler(event, context):
    return app.resolve(event, context)
""",
)
PYTHON = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


def _wheelhouse(packages: list[str]) -> Path:
    """The wheels for `packages`, downloaded from PyPI once (then reused, offline)."""
    key = hashlib.sha256(" ".join(sorted(packages)).encode()).hexdigest()[:16]
    marker = WHEELHOUSE / f".complete-{key}"
    if not marker.exists():
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        subprocess.run([*PYTHON, "download", "--only-binary=:all:", "-d", str(WHEELHOUSE),
                        *packages], check=True, timeout=600)  # fmt: skip
        marker.touch()
    return WHEELHOUSE


@pytest.fixture(scope="session")
def app_dirs() -> Iterator[dict[str, Path]]:
    """A code directory per app: its main.py plus its dependencies, readable by sandbox uids
    (the pool's local node sees this machine's /tmp, as a pool image's own files)."""
    every = sorted({p for packages, _ in APPS.values() for p in packages})
    wheels = _wheelhouse(every)
    root = Path(tempfile.mkdtemp(prefix="nest-test-apps-"))
    os.chmod(root, 0o755)
    dirs = {}
    for name, (packages, source) in APPS.items():
        target = root / name
        subprocess.run([*PYTHON, "install", "--no-index", "--find-links", str(wheels),
                        "--target", str(target), *packages], check=True, timeout=600)  # fmt: skip
        (target / "main.py").write_text(source)
        (target / "gate").touch()
        subprocess.run(["chmod", "-R", "a+rX", str(target)], check=True)
        dirs[name] = target
    yield dirs
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def with_operator(operator_active: bool) -> None:  # noqa: F811
    if not operator_active:
        pytest.skip("waits for the operator (deploy/operator/ or `nest operator run`)")


def deploy(
    developer: Client,  # noqa: F811
    name: str,
    code: Path,
    interface: str,
    handler: str,
    isolation: str = "subprocess",
) -> str:
    """Create the function and wait until it answers; its trigger's base URL."""
    body = {"name": name, "handler": handler, "code": {"path": str(code)},
            "interface": interface, "isolation": isolation, "memory": "256Mi", "replicas": 1,
            "timeoutSeconds": 60}  # fmt: skip
    created = developer.create(**body)
    assert created.status_code == 201, created.text
    base = f"{developer.base}/fn/{developer.ns}/{name}"

    def up() -> bool:
        # Held by the activator until a sandbox is ready; 504 while it imports its framework.
        resp = developer.request("GET", base + "/__nest_probe__")
        assert resp.status_code not in (500, 502), resp.text
        return resp.status_code not in (503, 504)

    wait_for(up, timeout=180, what=f"{name} to answer through the gateway")
    return base


def get(developer: Client, url: str, **kw: Any) -> requests.Response:  # noqa: F811
    return developer.request("GET", url, **kw)


def test_fastapi_app_path_query_validation_and_json_body(
    developer: Client,  # noqa: F811
    app_dirs: dict[str, Path],
) -> None:
    base = deploy(developer, "fastapi", app_dirs["fastapi"], "asgi", "main:app")
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
    app_dirs: dict[str, Path],
    isolation: str,
) -> None:
    base = deploy(developer, "flask", app_dirs["flask"], "wsgi", "main:app", isolation)
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
    app_dirs: dict[str, Path],
) -> None:
    base = deploy(developer, "mangum", app_dirs["mangum"], "apigateway-v2", "main:handler")
    resp = get(developer, f"{base}/items/7", params=[("tag", "a"), ("tag", "b")],
               cookies={"flavour": "mint"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"item_id": 7, "tag": ["a", "b"], "cookie": "mint", "path": "/items/7"}
    assert resp.cookies.get("seen") == "7" and resp.cookies.get("again") == "yes"
    assert len(resp.raw.headers.getlist("Set-Cookie")) == 2
    invalid = get(developer, f"{base}/items/seven")
    assert invalid.status_code == 422, invalid.text


def test_powertools_resolver_as_apigateway_v1_with_its_404_and_invoke(
    developer: Client,  # noqa: F811
    app_dirs: dict[str, Path],
) -> None:
    base = deploy(developer, "powertools", app_dirs["powertools"], "apigateway-v1",
                  "main:handler")  # fmt: skip
    resp = get(developer, f"{base}/hello/ada", params=[("q", "1"), ("tag", "a"), ("tag", "b")])
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"hello": "ada", "q": "1", "tags": ["a", "b"], "method": "GET"}
    missing = get(developer, f"{base}/nowhere")
    assert missing.status_code == 404, missing.text
    assert missing.json() == {"statusCode": 404, "message": "Not found"}
    # A JSON event sent to :invoke reaches the Lambda interface as a POST to / with that body.
    invoked = developer.invoke("powertools", {"order": 1})
    assert invoked.status_code == 202, invoked.text
    assert invoked.json() == {"order": 1} and invoked.headers["X-Seen"] == "POST"


@contextmanager
def gate_held(app_dir: Path) -> Iterator[Any]:
    """The app's gate, shut: its stream's second event waits until the test releases it."""
    with open(app_dir / "gate") as gate:
        fcntl.flock(gate, fcntl.LOCK_EX)
        yield gate


@pytest.mark.parametrize("isolation", ["subprocess", "namespace"])
def test_a_streaming_response_reaches_the_caller_event_by_event(
    developer: Client,  # noqa: F811
    app_dirs: dict[str, Path],
    isolation: str,
) -> None:
    base = deploy(developer, "events", app_dirs["fastapi"], "asgi", "main:app", isolation)
    with gate_held(app_dirs["fastapi"]) as gate:
        resp = developer.request("GET", f"{base}/events", stream=True)
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        chunks = resp.iter_content(chunk_size=None)  # each as it arrives
        assert next(chunks) == b"data: one\n\n"  # while the app waits at the gate
        fcntl.flock(gate, fcntl.LOCK_UN)
        assert b"".join(chunks) == b"data: two\n\n"

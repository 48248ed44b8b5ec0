"""The OpenAPI document: valid 3.1, committed and in sync with the code, complete, browsable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from openapi_spec_validator import validate
from prometheus_client import CollectorRegistry

from gateway import openapi
from gateway.app import Gateway
from gateway.invoke import Invoker, Metrics
from gateway.kube import Kube
from gateway.routes import ROUTES
from nest_kube.fake import FakeApi


def test_document_is_valid_openapi_3_1() -> None:
    doc = openapi.document()
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_committed_document_matches_the_code() -> None:
    assert openapi.check() == [], "run `nest-gateway openapi --write`"


def test_check_reports_drift(tmp_path: Path) -> None:
    doc = openapi.document()
    doc["components"]["schemas"]["FunctionCreate"]["properties"].pop("handler")
    stale = tmp_path / "openapi.json"
    stale.write_text(json.dumps(doc))
    problems = openapi.check(stale)
    assert problems and "components.schemas.FunctionCreate.properties.handler" in problems[0]
    assert openapi.check(tmp_path / "missing.json")[0].endswith(
        "cannot read (No such file or directory)"
    )


def test_cli_check_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "gateway", "openapi", "--check"],
                        capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    stale = tmp_path / "openapi.json"
    stale.write_text("{}")
    bad = subprocess.run(
        [sys.executable, "-m", "gateway", "openapi", "--check", "--file", str(stale)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 1 and "openapi --write" in bad.stderr


def test_every_route_is_documented_and_has_a_handler() -> None:
    doc = openapi.document()
    operations = {op["operationId"] for ops in doc["paths"].values() for op in ops.values()}
    for route in ROUTES:
        assert route.path in doc["paths"]
        assert any(op.startswith(route.operation_id) for op in operations)
    kube = Kube(FakeApi())  # constructing it makes no call
    gateway = Gateway(kube, Invoker(kube, Metrics(CollectorRegistry()), 1, 1.0), None)
    assert set(gateway.handlers) == {route.operation_id for route in ROUTES}


def test_components_come_from_the_crds_models() -> None:
    schemas = openapi.document()["components"]["schemas"]
    for name in ("SandboxDeploymentSpec", "SandboxEndpointsStatus", "Autoscaling", "SandboxStatus"):
        assert name in schemas
    assert schemas["FunctionCreate"]["additionalProperties"] is False


def test_docs_page_lists_every_operation_offline() -> None:
    doc = openapi.document()
    page = openapi.docs_html(doc)
    for path in doc["paths"]:
        assert path in page
    assert "http://" not in page and "https://cdn" not in page

"""nest_api sits between crds and its two users: it imports crds (and pydantic), never the
gateway, the CLI, the sidecar, the operator or the runtime, so either user can import it."""

from __future__ import annotations

from pathlib import Path

import nest_api
from tests.sources import imported_tops

ALLOWED = {"crds", "pydantic", "nest_api", "__future__", "dataclasses", "typing"}


def test_the_api_package_imports_only_crds_and_pydantic() -> None:
    folder = Path(nest_api.__file__).parent
    found = {path.name: imported_tops(path) - ALLOWED for path in sorted(folder.glob("*.py"))}
    assert set(found) >= {"convert.py", "models.py", "errors.py"}
    assert {name: tops for name, tops in found.items() if tops} == {}


def test_the_gateway_reports_the_api_errors_as_its_own() -> None:
    from gateway import errors as gateway_errors
    from nest_api import errors as api_errors

    assert gateway_errors.GatewayError is api_errors.ApiError
    assert issubclass(gateway_errors.QueueFull, api_errors.ApiError)
    problem = gateway_errors.problem(api_errors.NotFound("no such function"), "/x")
    assert (problem.status, problem.body["type"].rsplit("/", 1)[-1]) == (404, "not-found")

"""Property-based tests of the gateway's API: schemathesis generates requests from /openapi.json.

Every operation of the committed document is exercised against the gateway pod from deploy/ with
a token allowed to do everything in the test's namespace (the generated namespace parameter is
pinned to it, so created functions land somewhere real and are cleaned up with it). Whatever the
input, the gateway must answer without a server error, and its responses must match the document.
Invocations of generated functions are held by the activator while nothing is ready, so the
activation wait is what bounds them; they may end in 504, never in 500.
"""

from __future__ import annotations

from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway import openapi
from tests.integration.test_gateway import (  # noqa: F401 - fixtures used by name
    Client,
    developer,
    gateway_url,
)

schema = schemathesis.openapi.from_dict(openapi.document())
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_server_error_on_any_generated_input(case: Any, developer: Client) -> None:  # noqa: F811
    case.path_parameters = {**(case.path_parameters or {}), "namespace": developer.ns}
    session = requests.Session()
    session.headers.update(developer.session.headers)
    # Invocations of generated functions are held until the activation timeout; give them that.
    case.call_and_validate(base_url=developer.base, session=session, checks=CHECKS, timeout=45)

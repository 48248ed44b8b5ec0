"""How API server failures reach a management API caller: theirs to fix (4xx), not theirs
(502), or the API server away (503 with Retry-After)."""

from __future__ import annotations

from gateway.errors import ApiUnavailable, Forbidden, InvalidInput, NotFound, Upstream
from gateway.kube import api_error
from nest_kube import ApiError, Unreachable


def _exc(status: int, message: str) -> ApiError:
    return ApiError(status, "x", {"kind": "Status", "message": message})


def test_an_admission_refusal_is_the_callers_and_says_why() -> None:
    message = 'admission webhook "sandboxes.x" denied the request: spec.pool: no SandboxPool "p"'
    error = api_error(_exc(403, message), "function ns/f")
    assert isinstance(error, Forbidden) and error.status == 403
    assert "spec.pool" in error.detail


def test_the_gateways_own_credentials_failing_is_upstream() -> None:
    error = api_error(_exc(403, 'sandboxes is forbidden: User "x" cannot create'), "function ns/f")
    assert isinstance(error, Upstream) and error.status == 502


def test_not_found_and_invalid_keep_their_meaning() -> None:
    assert isinstance(api_error(_exc(404, "gone"), "f"), NotFound)
    assert isinstance(api_error(_exc(422, "bad"), "f"), InvalidInput)


def test_no_answer_or_a_server_fault_is_unavailable_with_retry_after() -> None:
    for exc in (Unreachable("connection refused"), _exc(503, "etcd"), _exc(429, "slow down")):
        error = api_error(exc, "f")
        assert isinstance(error, ApiUnavailable) and error.status == 503
        assert error.headers["Retry-After"] == "5"


def test_field_causes_are_kept() -> None:
    status = {"kind": "Status", "message": "invalid", "details": {"causes": [
        {"field": "spec.replicas", "message": "must be >= 0"}]}}  # fmt: skip
    error = api_error(ApiError(422, "Invalid", status), "function ns/f")
    assert isinstance(error, InvalidInput)
    assert [(c.field, c.message) for c in error.errors] == [("spec.replicas", "must be >= 0")]

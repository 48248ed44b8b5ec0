"""Restart decisions and back-off of the sidecar's workers."""

import pytest

from crds.sandbox import PERMANENT_FAILURE_REASONS, RestartPolicy
from nest_sidecar.errors import ChecksumMismatch, CodePathNotFound, InvalidCodeArchive
from nest_sidecar.worker import Backoff, should_restart

A, F, N = RestartPolicy.ALWAYS, RestartPolicy.ON_FAILURE, RestartPolicy.NEVER


@pytest.mark.parametrize(
    ("policy", "reason", "clean", "restart"),
    [
        (A, "OOMKilled", False, True),
        (F, "OOMKilled", False, True),
        (N, "OOMKilled", False, False),
        (A, "Completed", True, True),
        (F, "Completed", True, False),
        (A, "ImportError", False, False),
        (A, "ChecksumMismatch", False, False),
        (A, "CodeFetchFailed", False, True),
        (A, "RuntimeRestarted", False, True),
    ],
)
def test_should_restart(policy: RestartPolicy, reason: str, clean: bool, restart: bool) -> None:
    assert should_restart(policy, reason, clean) is restart


def test_the_sidecars_own_permanent_errors_are_in_the_api_list() -> None:
    for error in (ChecksumMismatch, InvalidCodeArchive, CodePathNotFound):
        assert error.reason in PERMANENT_FAILURE_REASONS


def test_back_off_doubles_to_its_cap() -> None:
    backoff = Backoff(initial=0.5, cap=4.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_function_name_is_the_deployment_when_labelled() -> None:
    from nest_sidecar.worker import function_name

    meta = {"namespace": "ns", "name": "hello-abc-x1"}
    assert function_name({"metadata": meta}) == "ns/hello-abc-x1"
    labelled = {**meta, "labels": {"nest.sandbox.dev/function": "hello"}}
    assert function_name({"metadata": labelled}) == "ns/hello"

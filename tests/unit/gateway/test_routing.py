"""The routing core: least-in-flight choice, retries' exclusions, and the activator's queue."""

from __future__ import annotations

import pytest

from gateway.errors import QueueFull
from gateway.routing import (
    Activator,
    Address,
    FunctionInfo,
    RoutingTable,
    addresses,
    function_info,
    runtime_refusal,
)

KEY = ("ns", "fn")
A = Address("uid-a", "a", "127.0.0.2", 8080)
B = Address("uid-b", "b", "127.0.0.3", 8080)


def test_addresses_keep_only_routable_ready_entries() -> None:
    status = {
        "ready": [
            {"sandbox": "a", "uid": "uid-a", "podName": "p", "podIP": "127.0.0.2", "port": 8080},
            {"sandbox": "x", "uid": "uid-x", "podName": "p"},  # no IP yet
        ],
        "notReady": [{"sandbox": "b", "uid": "uid-b", "podName": "p", "podIP": "127.9.9.9"}],
    }
    assert addresses(status) == (A,)
    assert addresses(None) == ()


def test_pick_prefers_the_sandbox_with_fewest_in_flight() -> None:
    table = RoutingTable()
    table.set_endpoints(KEY, (A, B))
    table.acquire(A)
    table.acquire(A)
    table.acquire(B)
    assert table.pick(KEY) == B
    table.release(A)
    table.release(A)
    assert table.pick(KEY) == A
    assert table.in_flight("uid-a") == 0


def test_ties_rotate_so_sequential_requests_spread() -> None:
    table = RoutingTable()
    table.set_endpoints(KEY, (A, B))
    assert {table.pick(KEY), table.pick(KEY)} == {A, B}


def test_pick_skips_excluded_sandboxes_and_unknown_functions() -> None:
    table = RoutingTable()
    table.set_endpoints(KEY, (A, B))
    assert table.pick(KEY, exclude={"uid-a"}) == B
    assert table.pick(KEY, exclude={"uid-a", "uid-b"}) is None
    assert table.pick(("ns", "other")) is None
    table.set_endpoints(KEY, ())
    assert table.pick(KEY) is None and table.ready(KEY) == ()


def test_function_info_defaults_match_the_crd() -> None:
    info = function_info({"metadata": {"resourceVersion": "7"}, "spec": {}})
    assert info == FunctionInfo(replicas=1, timeout_seconds=30)
    spec = {
        "replicas": 0,
        "autoscaling": {"minReplicas": 2, "maxReplicas": 5},
        "template": {"spec": {"function": {"timeoutSeconds": 3}}},
    }
    info = function_info({"metadata": {}, "spec": spec})
    assert (info.replicas, info.timeout_seconds) == (0, 3)


async def test_activator_signals_when_a_queue_starts_and_releases_in_order() -> None:
    activator = Activator(capacity=3)
    first, signal = activator.hold(KEY)
    second, again = activator.hold(KEY)
    assert (signal, again) == (True, False)
    assert activator.queued(KEY) == 2
    assert not first.done()
    assert activator.release(KEY) == 2
    assert first.done() and second.done() and activator.queued(KEY) == 0
    _, signal = activator.hold(KEY)
    assert signal, "a new cold episode signals again"


async def test_activator_queue_is_bounded_and_forgets_who_gave_up() -> None:
    activator = Activator(capacity=1)
    held, _ = activator.hold(KEY)
    with pytest.raises(QueueFull, match="1 requests already wait"):
        activator.hold(KEY)
    activator.forget(KEY, held)
    assert activator.queued(KEY) == 0
    _, signal = activator.hold(KEY)
    assert signal, "a queue that emptied (everyone gave up) reports its next request again"
    assert activator.keys() == [KEY]


@pytest.mark.parametrize(
    ("status", "body", "word"),
    [
        (404, b'{"error": "NotFound", "message": "no sandbox x"}', "NotFound"),
        (503, b'{"error": "NotRunning", "message": "stopping"}', "NotRunning"),
        (429, b'{"error": "TooManyRequests", "message": "full"}', "TooManyRequests"),
        (401, b'{"error":"Unauthorized","message":"bad signature","sandbox":null}', "Unauthorized"),
        (401, b'{"error": "Unauthorized", "message": "m", "realm": "app"}', None),  # the function's
        (404, b'{"error": "NotFound", "message": "m", "detail": 1}', None),  # the function's
        (404, b"not found", None),
        (500, b'{"error": "NotFound", "message": "m"}', None),
        (200, b'{"error": "NotFound"}', None),
    ],
)
def test_only_the_runtimes_own_refusals_are_retried(
    status: int, body: bytes, word: str | None
) -> None:
    assert runtime_refusal(status, body) == word

"""The routing core: least-in-flight choice, retries' exclusions, outlier ejection and the
activator's queue."""

from __future__ import annotations

import pytest

from gateway.errors import QueueFull
from gateway.routing import (
    EJECT_FIRST_SECONDS,
    EJECT_MAX_SECONDS,
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


class Clock:
    """The table's clock, moved by the test: ejection periods without waiting for them."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_ejected_sandbox_is_skipped_until_its_period_ends() -> None:
    clock = Clock()
    table = RoutingTable(clock)
    table.set_endpoints(KEY, (A, B))
    assert table.eject(KEY, A) == EJECT_FIRST_SECONDS
    assert [table.pick(KEY) for _ in range(4)] == [B] * 4, "ties no longer rotate onto A"
    table.acquire(B)
    table.acquire(B)
    assert table.pick(KEY) == B, "an ejected sandbox loses even to a busier one"
    clock.now += EJECT_FIRST_SECONDS
    assert not table.ejected("uid-a")
    assert table.pick(KEY) == A, "back once its period is over"


def test_every_candidate_ejected_is_still_tried_rather_than_none() -> None:
    table = RoutingTable(Clock())
    table.set_endpoints(KEY, (A, B))
    table.eject(KEY, A)
    assert table.pick(KEY, exclude={"uid-b"}) == A, "B refused too: A is the last hope"
    table.eject(KEY, B)
    assert table.pick(KEY) in {A, B}
    assert table.pick(KEY, exclude={"uid-a", "uid-b"}) is None


def test_the_period_doubles_while_it_keeps_failing_and_resets_on_an_answer() -> None:
    clock = Clock()
    table = RoutingTable(clock)
    table.set_endpoints(KEY, (A, B))
    spans = []
    for _ in range(6):
        spans.append(table.eject(KEY, A))
        assert table.eject(KEY, A) is None, "failures during the period are the same outage"
        clock.now += EJECT_MAX_SECONDS
    assert spans == [1.0, 2.0, 4.0, 8.0, EJECT_MAX_SECONDS, EJECT_MAX_SECONDS]
    table.eject(KEY, A)
    table.answered(A)
    assert not table.ejected("uid-a") and table.eject(KEY, A) == EJECT_FIRST_SECONDS


def test_leaving_the_endpoints_forgets_an_ejection() -> None:
    clock = Clock()
    table = RoutingTable(clock)
    table.set_endpoints(KEY, (A, B))
    table.eject(KEY, A)
    clock.now += EJECT_FIRST_SECONDS
    table.eject(KEY, A)  # 2 s now
    table.set_endpoints(KEY, (A, B))  # re-listed without leaving: the ejection stays
    assert table.ejected("uid-a")
    table.set_endpoints(KEY, (B,))  # not Ready while its runtime restarts
    assert table.eject(KEY, A) is None, "no state is kept for a sandbox that is not listed"
    table.set_endpoints(KEY, (A, B))  # Ready again: starts clean
    assert not table.ejected("uid-a")
    assert table.eject(KEY, A) == EJECT_FIRST_SECONDS
    table.remove(KEY)
    assert not table.ejected("uid-a")


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

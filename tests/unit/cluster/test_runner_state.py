"""The container state machine rejects illegal moves; restart and back-off follow the kubelet."""

import pytest

from nest_cluster.errors import RunnerError
from nest_cluster.runner.state import (
    TRANSITIONS,
    BackoffPolicy,
    ContainerRecord,
    ContainerState,
    Termination,
    should_restart,
)

OK = Termination(exit_code=0, finished_at=1.0)
FAIL = Termination(exit_code=3, finished_at=1.0)


def test_legal_path_through_a_crash_loop() -> None:
    record = ContainerRecord("c")
    record = record.move(ContainerState.RUNNING, pid=10)
    record = record.move(ContainerState.EXITED, last=FAIL, pid=None)
    record = record.move(ContainerState.BACKOFF)
    record = record.move(ContainerState.RUNNING, pid=11)
    assert record.state is ContainerState.RUNNING and record.last == FAIL


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (ContainerState.PENDING, ContainerState.BACKOFF),
        (ContainerState.EXITED, ContainerState.RUNNING),  # a restart must wait out the back-off
        (ContainerState.STOPPING, ContainerState.RUNNING),
        (ContainerState.RUNNING, ContainerState.RUNNING),
    ],
)
def test_illegal_moves_are_rejected(start: ContainerState, to: ContainerState) -> None:
    assert to not in TRANSITIONS[start]
    with pytest.raises(RunnerError, match="illegal move"):
        ContainerRecord("c", state=start).move(to)


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(ContainerState)


@pytest.mark.parametrize(
    ("policy", "term", "init", "expected"),
    [
        ("Always", OK, False, True),
        ("Always", FAIL, False, True),
        ("OnFailure", OK, False, False),
        ("OnFailure", FAIL, False, True),
        ("Never", FAIL, False, False),
        ("Always", OK, True, False),
        ("Always", FAIL, True, True),
        ("Never", FAIL, True, False),
    ],
)
def test_should_restart(policy: str, term: Termination, init: bool, expected: bool) -> None:
    assert should_restart(policy, term, init) is expected


def test_backoff_doubles_to_the_cap_and_resets_after_a_long_run() -> None:
    policy = BackoffPolicy(initial=1.0, cap=60.0, reset_after=600.0)
    delays = [policy.next_delay(0.0, 0.1)]
    for _ in range(8):
        delays.append(policy.next_delay(delays[-1], 0.1))
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert policy.next_delay(60.0, 600.0) == 1.0


def test_termination_reasons() -> None:
    assert OK.display_reason == "Completed"
    assert FAIL.display_reason == "Error"
    assert Termination(127, 1.0, reason="RunContainerError").display_reason == "RunContainerError"

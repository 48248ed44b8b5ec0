"""The Sandbox phase table: exactly the edges the design names, and its shape as a whole."""

from __future__ import annotations

import itertools

import pytest

from crds import SandboxPhase, can_transition

P = SandboxPhase
EXPECTED_EDGES = {
    (P.PENDING, P.SCHEDULED),
    (P.SCHEDULED, P.STARTING),
    (P.SCHEDULED, P.FAILED),
    (P.STARTING, P.RUNNING),
    (P.STARTING, P.FAILED),
    (P.RUNNING, P.SUCCEEDED),
    (P.RUNNING, P.FAILED),
    (P.SUCCEEDED, P.STARTING),
    (P.FAILED, P.STARTING),
    (P.RUNNING, P.STARTING),
    *((phase, P.TERMINATING) for phase in P if phase is not P.TERMINATING),
}


def test_the_table_has_exactly_the_designed_edges() -> None:
    edges = {(a, b) for a, b in itertools.product(P, P) if can_transition(a, b)}
    assert edges == EXPECTED_EDGES


def test_staying_put_is_not_a_transition() -> None:
    assert not any(can_transition(phase, phase) for phase in P)


def test_terminating_is_final_and_reachable_from_everywhere() -> None:
    assert not any(can_transition(P.TERMINATING, other) for other in P)
    assert all(can_transition(phase, P.TERMINATING) for phase in P if phase is not P.TERMINATING)


@pytest.mark.parametrize(
    "illegal",
    [
        (P.PENDING, P.RUNNING),  # nothing runs before it is bound and started
        (P.SCHEDULED, P.PENDING),  # bindings are never undone; a replacement is created instead
        (P.RUNNING, P.SCHEDULED),  # a restart stays in its pod: Starting, never re-scheduled
        (P.FAILED, P.RUNNING),  # restarting re-imports the code: Starting first
    ],
)
def test_illegal_moves(illegal: tuple[SandboxPhase, SandboxPhase]) -> None:
    assert not can_transition(*illegal)


def test_every_phase_is_reachable_from_pending() -> None:
    seen, frontier = {P.PENDING}, [P.PENDING]
    while frontier:
        current = frontier.pop()
        for nxt in P:
            if can_transition(current, nxt) and nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(P)

"""Status conditions as plain values, and the one rule for updating them.

Why: every controller's status function returns conditions, and all of them must keep
`last_transition_time` when a condition's status does not change (clients use it to tell how
long something has been failing). The rule lives here once. Times are injected seconds since
the epoch; the I/O shell formats them as RFC 3339 when it writes status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

TRUE = "True"
FALSE = "False"
UNKNOWN = "Unknown"


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition as in metav1.Condition, plus apps/v1's lastUpdateTime."""

    type: str
    status: str
    reason: str
    message: str = ""
    last_transition_time: float = 0.0
    # When the condition was last (re)asserted, even unchanged: Deployments measure progress
    # deadlines from it, as apps/v1 DeploymentCondition.lastUpdateTime.
    last_update_time: float = 0.0


def find(conditions: Sequence[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: Sequence[Condition], new: Condition, now: float, touch: bool = False
) -> tuple[Condition, ...]:
    """`conditions` with `new` replacing the one of its type, transition time kept if unchanged.

    An identical condition (same status, reason and message) is kept as it is, update time
    included, unless `touch`: re-asserting a condition is not progress unless the caller says so.
    """
    old = find(conditions, new.type)
    if (
        not touch
        and old is not None
        and (old.status, old.reason, old.message)
        == (
            new.status,
            new.reason,
            new.message,
        )
    ):
        return tuple(conditions)
    transition = old.last_transition_time if old is not None and old.status == new.status else now
    updated = replace(new, last_transition_time=transition, last_update_time=now)
    kept = tuple(c for c in conditions if c.type != new.type)
    return (*kept, updated)


def remove_condition(conditions: Sequence[Condition], type_: str) -> tuple[Condition, ...]:
    return tuple(c for c in conditions if c.type != type_)

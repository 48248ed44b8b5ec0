"""When a status write nothing waits on goes out: the batch both endpoints and deployments use.

Why one module: the endpoints controller and the deployment controller both write a status per
change of their sandboxes, and a 2,000-sandbox apply made that a write every few sandboxes
(issue 14). Each decides what is `urgent` for its readers (a ready address lost, a new
generation); everything else waits here until what would be written stood still for
`QUIET_SECONDS`, at most `LONGEST_HOLD_SECONDS` after the first change held back (the
EndpointSlice controller's --endpointslice-updates-batch-period, with a debounce). One requeue
per key is outstanding at a time, however many changes arrive while a write is held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

QUIET_SECONDS: Final = 1.0
LONGEST_HOLD_SECONDS: Final = 10.0


@dataclass
class _Held:
    since: float  # when the first change held back was seen: the longest hold counts from here
    changed: float  # when what would be written last changed: the quiet period counts from here
    desired: object
    timer: float | None = None  # when the requeue asked for is due


class StatusBatch:
    """Per key: whether a status change is written now, and when to look again if not."""

    def __init__(self, quiet: float = QUIET_SECONDS, longest: float = LONGEST_HOLD_SECONDS) -> None:
        self.quiet, self.longest = quiet, longest
        self._held: dict[str, _Held] = {}

    def admit(
        self, key: str, desired: object, now: float, urgent: bool
    ) -> tuple[bool, float | None]:
        """(write now?, requeue after how many seconds or None) for a status that differs from
        the one written: an urgent one at once (and the batch starts over), else `hold`."""
        if urgent:
            self.done(key)
            return True, None
        return self.hold(key, desired, now)

    def hold(self, key: str, desired: object, now: float) -> tuple[bool, float | None]:
        """(write now?, requeue after how many seconds or None) for a change to `desired`,
        which must compare equal for equal statuses (no timestamps in it)."""
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held(now, now, desired)
        elif held.desired != desired:
            held.changed, held.desired = now, desired
        due = min(held.changed + self.quiet, held.since + self.longest)
        if due <= now:
            del self._held[key]
            return True, None
        if held.timer is not None and held.timer > now:
            return False, None  # the requeue outstanding comes first and asks again
        held.timer = due
        return False, due - now

    def done(self, key: str) -> None:
        """Written, or nothing left to write: the next change starts a new batch."""
        self._held.pop(key, None)

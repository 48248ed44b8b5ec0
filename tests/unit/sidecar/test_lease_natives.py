"""The Lease carries the runtime's loaded native distributions to the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from crds import constants as c
from nest_sidecar.lease import Capacity, Heartbeat, PodRef, Usage, lease_body

POD = PodRef("pool-0", "nest-system", "uid-0", "default")
CAPACITY = Capacity(memory_bytes=1, cpu_millis=1, max_sandboxes=1)
USAGE = Usage(sandboxes=0, memory_bytes=0, cpu_millis=0)


def natives_of(body: dict[str, Any]) -> object:
    return json.loads(body["metadata"]["annotations"][c.NATIVE_DISTRIBUTIONS_ANNOTATION])


def test_the_lease_lists_the_natives_sorted() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    body = lease_body(POD, CAPACITY, USAGE, now, 40, ["numpy==2.0", "markupsafe==3.0.2"])
    assert natives_of(body) == ["markupsafe==3.0.2", "numpy==2.0"]
    assert natives_of(lease_body(POD, CAPACITY, USAGE, now, 40)) == []


class _Recorder(Heartbeat):
    """A Heartbeat whose renewals are recorded instead of sent; it stops after `rounds`."""

    def __init__(self, answers: list[Sequence[str] | Exception]) -> None:
        self.answers = answers
        super().__init__(None, POD, CAPACITY, lambda: USAGE, interval=0, natives=self._ask)  # type: ignore[arg-type]
        self.sent: list[tuple[str, ...]] = []

    async def _ask(self) -> Sequence[str]:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def renew(self) -> None:
        self.sent.append(self.loaded_natives)
        if not self.answers:
            raise asyncio.CancelledError


async def test_each_renewal_asks_the_runtime_and_keeps_the_last_answer_when_it_fails() -> None:
    beat = _Recorder([["numpy==2.0"], OSError("runtime restarting"), ["numpy==2.0", "x==1"]])
    with contextlib.suppress(asyncio.CancelledError):  # how _Recorder ends the loop
        await beat.run()
    assert beat.sent == [("numpy==2.0",), ("numpy==2.0",), ("numpy==2.0", "x==1")]

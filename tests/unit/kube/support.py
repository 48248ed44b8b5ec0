"""Waiting on a condition with a deadline, for async tests of the layer and of shells on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(probe: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    """Poll `probe` (on the loop, so the code under test runs between polls) until it returns
    something truthy; fail at the deadline with what was awaited and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {value!r}")
        await asyncio.sleep(0.005)  # yields to the tasks under test; the deadline bounds it

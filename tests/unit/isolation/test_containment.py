"""What namespace mode contains: slow imports, hung calls and their threads (issue 10, item 7).

Each test holds a file lock the function's code waits on (its import, or its handler), so a
"hang" lasts exactly as long as the test wants, and waits on conditions, never on time.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from isolation.base import Limits, SandboxSpec, SandboxState
from isolation.contract import Request
from isolation.errors import InvokeTimeout, LoadError, NotRunning, ThreadsExhausted
from isolation.namespace import NamespaceBackend
from isolation.threads import Account, QuotaPool
from tests.conformance.support import HELLO, wait_for, write_function


@pytest.fixture
async def backend() -> AsyncIterator[NamespaceBackend]:
    impl = NamespaceBackend()
    yield impl
    await impl.close()


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    path = tmp_path / "gate"
    path.touch()
    return path


@contextmanager
def held(gate: Path) -> Iterator[None]:
    """While held, code that takes a shared lock on `gate` waits."""
    with open(gate) as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def gate_call(gate: Path) -> Request:
    return Request(body=json.dumps({"gate": str(gate)}).encode())


def modules_from(code_dir: str) -> list[str]:
    return [
        name
        for name, module in list(sys.modules.items())
        if (getattr(module, "__file__", None) or "").startswith(code_dir)
    ]


async def test_a_slow_import_fails_with_import_timeout_and_the_loop_stays_free(
    backend: NamespaceBackend, gate: Path, tmp_path: Path
) -> None:
    source = (
        "import fcntl\n"
        f"with open({str(gate)!r}) as f:\n"
        "    fcntl.flock(f, fcntl.LOCK_SH)\n"
        "def handler(event, context):\n"
        "    return 'loaded'\n"
    )
    code = write_function(tmp_path / "slow", source)
    spec = SandboxSpec("slow", code, "main:handler", limits=Limits(timeout_s=0.5))
    with held(gate):
        creating = asyncio.create_task(backend.create(spec))
        # The import is blocked on a thread; the event loop meanwhile serves everyone else.
        await backend.create(SandboxSpec("other", HELLO, "main:handler"))
        assert (await backend.invoke("other", Request(body=b"{}"))).status == 200
        with pytest.raises(LoadError) as failed:
            await creating
        assert failed.value.reason == "ImportTimeout"
        assert "0.5s timeout" in failed.value.message
        status = backend.status("slow")
        assert (status.state, status.reason) == (SandboxState.FAILED, "ImportTimeout")
        # Restarted while the import still runs: refused, its thread still counts.
        await backend.remove("slow")
        with pytest.raises(LoadError) as again:
            await backend.create(spec)
        assert again.value.reason == "ImportTimeout"
        assert "earlier start" in again.value.message
        await backend.remove("slow")
    await wait_for(lambda: backend.threads()["busy"] == 0, what="the late import to return")
    assert modules_from(code) == [], "what the late import loaded is unloaded"
    assert (await backend.create(spec)).state is SandboxState.RUNNING
    assert (await backend.invoke("slow", Request())).body == b"loaded"


async def test_64_hung_calls_take_only_their_quota_and_the_neighbours_answer(
    backend: NamespaceBackend, gate: Path
) -> None:
    hung = Limits(concurrency=64, timeout_s=0.3)
    await backend.create(SandboxSpec("hang", HELLO, "main:gate", limits=hung))
    await backend.create(SandboxSpec("nb-sync", HELLO, "main:handler"))
    await backend.create(SandboxSpec("nb-async", HELLO, "main:async_handler"))
    quota = backend.threads()["quota_cap"]
    with held(gate):
        calls = [backend.invoke("hang", gate_call(gate)) for _ in range(64)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        timed_out = [r for r in results if isinstance(r, InvokeTimeout)]
        refused = [r for r in results if isinstance(r, NotRunning)]
        assert len(timed_out) == quota, results
        assert len(timed_out) + len(refused) == 64
        assert backend.threads()["busy"] == quota, "one function holds at most its quota"
        assert backend.threads()["overdue"] == quota
        for neighbour in ("nb-sync", "nb-async"):
            assert (await backend.invoke(neighbour, Request(body=b"{}"))).status == 200
        status = backend.status("hang")
        assert (status.state, status.reason) == (SandboxState.FAILED, "Unhealthy")
        assert f"hold {quota} of its {quota} thread(s)" in status.message
        with pytest.raises(NotRunning, match="Unhealthy"):
            await backend.invoke("hang", gate_call(gate))
    await wait_for(lambda: backend.threads()["busy"] == 0, what="the hung threads to return")


async def test_a_restart_waits_for_the_leaked_threads_of_the_same_id(
    backend: NamespaceBackend, gate: Path
) -> None:
    spec = SandboxSpec("hang", HELLO, "main:gate", limits=Limits(timeout_s=0.2))
    await backend.create(spec)
    with held(gate):
        with pytest.raises(InvokeTimeout):
            await backend.invoke("hang", gate_call(gate))
        assert backend.status("hang").reason == "Unhealthy"
        await backend.remove("hang")  # what the sidecar does before creating it again
        with pytest.raises(LoadError) as refused:
            await backend.create(spec)
        assert refused.value.reason == "Unhealthy"
        assert "still run(s) past the timeout" in refused.value.message
        await backend.remove("hang")
    await wait_for(lambda: backend.threads()["busy"] == 0, what="the leaked thread to return")
    assert (await backend.create(spec)).state is SandboxState.RUNNING
    assert (await backend.invoke("hang", gate_call(gate))).status == 200


async def test_one_hung_call_of_several_turns_unhealthy_after_a_grace_period(
    backend: NamespaceBackend, gate: Path
) -> None:
    limits = Limits(concurrency=4, timeout_s=0.2)
    await backend.create(SandboxSpec("some", HELLO, "main:gate", limits=limits))
    with held(gate):
        with pytest.raises(InvokeTimeout):
            await backend.invoke("some", gate_call(gate))
        await wait_for(
            lambda: backend.status("some").reason == "Unhealthy",
            what="Unhealthy once the overrun call still runs after the grace period",
        )
    await wait_for(lambda: backend.threads()["busy"] == 0, what="the hung thread to return")


async def test_a_call_that_finishes_after_its_timeout_is_not_unhealthy_for_good(
    backend: NamespaceBackend, gate: Path
) -> None:
    """Slow, not hung: the thread returns within the grace period and the sandbox stays up."""
    limits = Limits(concurrency=4, timeout_s=2.0)  # the grace period is as long: 2 s
    await backend.create(SandboxSpec("slow", HELLO, "main:gate", limits=limits))
    with held(gate), pytest.raises(InvokeTimeout):
        await backend.invoke("slow", gate_call(gate))
    await wait_for(lambda: backend.threads()["overdue"] == 0, what="the slow call to return")
    assert (await backend.invoke("slow", gate_call(gate))).status == 200
    # A check still armed from the overrun finds nothing overdue: never Unhealthy for it.
    await wait_for(lambda: backend._sandboxes["slow"].hung_check is None, timeout=35)
    assert backend.status("slow").state is SandboxState.RUNNING


async def test_the_pool_refuses_beyond_the_quota_and_counts_overdue_threads(gate: Path) -> None:
    pool = QuotaPool(limit=8)
    account = Account("a", quota=1)
    late: list[str] = []

    def wait_at_gate() -> str:
        with open(gate) as f:
            fcntl.flock(f, fcntl.LOCK_SH)
        return "through"

    with held(gate):
        task = asyncio.create_task(pool.run(account, wait_at_gate))
        await wait_for(lambda: account.running == 1, what="the job to start")
        with pytest.raises(ThreadsExhausted, match="all 1 of its threads busy"):
            pool.submit(account, wait_at_gate)
        task.cancel()  # the caller's timeout: the thread runs on, overdue
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (account.busy, account.overdue, pool.overdue) == (1, 1, 1)
        with pytest.raises(ThreadsExhausted, match="1 of them held by calls that overran"):
            pool.submit(account, wait_at_gate)
        pool.ended_late = lambda acct: late.append(acct.key)
    await wait_for(lambda: late == ["a"], what="the overdue job's end to be reported")
    assert (account.busy, account.overdue, account.running, pool.busy) == (0, 0, 0, 0)
    assert await pool.run(account, lambda: "again") == "again"
    pool.close()


async def test_a_queued_job_given_up_never_runs() -> None:
    pool = QuotaPool(limit=1)
    blocker = Account("blocker", quota=1)
    other = Account("other", quota=1)
    ran: list[str] = []
    gate = threading.Event()
    first = asyncio.create_task(pool.run(blocker, gate.wait))
    await wait_for(lambda: blocker.running == 1, what="the only thread to be taken")
    queued = asyncio.create_task(pool.run(other, lambda: ran.append("ran")))
    await wait_for(lambda: other.busy == 1, what="the second job to queue")
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert other.busy == 0 and not other.overdue
    gate.set()
    await first
    assert await pool.run(other, lambda: "next") == "next"
    assert ran == []
    pool.close()

"""Behaviour only the subprocess backend has: env/cwd, kills with reasons, restarts, no leaks."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from isolation.base import Limits, SandboxSpec, SandboxState
from isolation.contract import Request
from isolation.errors import InvokeTimeout, LoadError, NotRunning, SandboxCrashed
from isolation.process import SubprocessBackend
from tests.conformance.conftest import Recorder
from tests.conformance.support import HELLO, child_processes, wait_for


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def backend(recorder: Recorder) -> AsyncIterator[SubprocessBackend]:
    impl = SubprocessBackend(on_change=recorder, memory_poll_s=0.05)
    await impl.start()
    yield impl
    await impl.close()
    assert child_processes() == []


def dead(pid: int) -> bool:
    """Gone, or a zombie: an orphan waits for whichever process adopted it to reap it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def event(**fields: object) -> Request:
    return Request(body=json.dumps(fields).encode())


async def test_env_and_working_directory_are_per_sandbox(
    backend: SubprocessBackend, tmp_path: Path
) -> None:
    await backend.create(SandboxSpec("a", HELLO, "main:environment", env={"NEST_EXAMPLE": "A"}))
    await backend.create(SandboxSpec("b", HELLO, "main:environment", env={"NEST_EXAMPLE": "B"}))
    a = json.loads((await backend.invoke("a", Request())).body)
    b = json.loads((await backend.invoke("b", Request())).body)
    assert (a["env"], b["env"]) == ("A", "B")
    assert a["cwd"] == HELLO
    assert a["pid"] != b["pid"] != os.getpid()
    assert "NEST_EXAMPLE" not in os.environ
    assert a["pid"] == backend.status("a").pid


async def test_working_directory_can_be_set_per_sandbox(
    backend: SubprocessBackend, tmp_path: Path
) -> None:
    await backend.create(SandboxSpec("a", HELLO, "main:environment", workdir=str(tmp_path)))
    assert json.loads((await backend.invoke("a", Request())).body)["cwd"] == str(tmp_path)
    with pytest.raises(LoadError) as caught:
        await backend.create(SandboxSpec("b", HELLO, "main:handler", workdir=str(tmp_path / "no")))
    assert (caught.value.reason, backend.status("b").state) == ("Error", SandboxState.FAILED)
    assert "FileNotFoundError" in caught.value.message


async def test_sandboxes_are_children_of_the_zygote(backend: SubprocessBackend) -> None:
    status = await backend.create(SandboxSpec("a", HELLO, "main:handler"))
    assert status.pid is not None
    assert psutil.Process(status.pid).ppid() == backend.zygote_pid


async def test_timeout_kills_and_reports_without_restarting(
    backend: SubprocessBackend, recorder: Recorder
) -> None:
    """The sidecar alone decides restarts, so a timeout is reported, never restarted here."""
    spec = SandboxSpec("slow", HELLO, "main:slow", limits=Limits(timeout_s=0.3))
    first = await backend.create(spec)
    with pytest.raises(InvokeTimeout):
        await backend.invoke("slow", event(seconds=30))
    await wait_for(lambda: backend.status("slow").state is SandboxState.FAILED, what="Failed")
    status = backend.status("slow")
    assert status.reason == "Timeout"
    assert "overran the 0.3s timeout" in status.message
    assert first.pid is not None and not psutil.pid_exists(first.pid)
    assert recorder.states("slow") == ["Creating", "Running", "Failed"]
    assert backend.usage("slow").timeouts == 1
    with pytest.raises(NotRunning):
        await backend.invoke("slow", event(seconds=0))


async def test_memory_limit_kills_with_oomkilled(backend: SubprocessBackend) -> None:
    limits = Limits(memory_mb=40, timeout_s=60)
    await backend.create(SandboxSpec("hog", HELLO, "main:allocate", limits=limits))
    with pytest.raises(SandboxCrashed):
        await backend.invoke("hog", event(mb=200, hold_seconds=60))
    status = backend.status("hog")
    assert (status.state, status.reason, status.signal) == (
        SandboxState.FAILED,
        "OOMKilled",
        signal.SIGKILL,
    )
    assert "limit 40 MiB" in status.message


@pytest.mark.parametrize(
    ("fields", "exit_code", "sig", "message"),
    [
        ({"code": 3}, 3, None, "exited with code 3"),
        ({"signal": True}, None, signal.SIGSEGV, "killed by signal SIGSEGV"),
    ],
)
async def test_crash_reports_exit_code_or_signal(
    backend: SubprocessBackend,
    fields: dict[str, object],
    exit_code: int | None,
    sig: int | None,
    message: str,
) -> None:
    await backend.create(SandboxSpec("c", HELLO, "main:crash"))
    with pytest.raises(SandboxCrashed):
        await backend.invoke("c", event(**fields))
    status = backend.status("c")
    assert (status.state, status.reason, status.exit_code, status.signal, status.message) == (
        SandboxState.FAILED,
        "Crashed",
        exit_code,
        sig,
        message,
    )


async def test_stop_leaks_no_file_descriptors_and_no_processes(
    backend: SubprocessBackend,
) -> None:
    me = psutil.Process()
    await backend.create(SandboxSpec("warm", HELLO, "main:handler"))  # first-use allocations
    await backend.remove("warm")
    fds_before = me.num_fds()
    pids = []
    for n in range(5):
        status = await backend.create(SandboxSpec(f"s{n}", HELLO, "main:handler"))
        pids.append(status.pid)
        assert (await backend.invoke(f"s{n}", Request())).status == 200
    for n in range(5):
        await backend.stop(f"s{n}", grace_s=2.0)
        await backend.remove(f"s{n}")
    assert me.num_fds() == fds_before
    assert [p.pid for p in child_processes()] == [backend.zygote_pid]
    assert not any(psutil.pid_exists(pid) for pid in pids if pid is not None)


async def test_stop_kills_a_busy_sandbox_after_the_grace_period(
    backend: SubprocessBackend,
) -> None:
    await backend.create(SandboxSpec("busy", HELLO, "main:slow", limits=Limits(timeout_s=60)))
    task = asyncio.create_task(backend.invoke("busy", event(seconds=60)))
    await wait_for(lambda: backend.usage("busy").in_flight == 1)
    status = await backend.stop("busy", grace_s=0.1)
    assert (status.state, status.signal) == (SandboxState.STOPPED, signal.SIGKILL)
    with pytest.raises(SandboxCrashed):
        await task


async def test_a_dead_zygote_fails_its_sandboxes_and_is_replaced(
    backend: SubprocessBackend,
) -> None:
    first = await backend.create(SandboxSpec("a", HELLO, "main:handler"))
    old_zygote = backend.zygote_pid
    assert old_zygote is not None
    os.kill(old_zygote, signal.SIGKILL)
    await wait_for(lambda: backend.status("a").state is SandboxState.FAILED, what="a Failed")
    status = backend.status("a")
    assert (status.reason, status.signal) == ("Crashed", signal.SIGKILL)
    assert "zygote" in status.message
    assert first.pid is not None
    await wait_for(lambda: dead(first.pid or 0), what="the orphaned sandbox to die")
    second = await backend.create(SandboxSpec("b", HELLO, "main:handler"))
    assert backend.zygote_pid not in (None, old_zygote)
    assert second.pid is not None and psutil.Process(second.pid).ppid() == backend.zygote_pid
    assert (await backend.invoke("b", Request())).status == 200


STUCK_STREAM = """
import fcntl, os

HERE = os.path.dirname(os.path.abspath(__file__))

def handler(event, context):
    yield "first"
    open(os.path.join(HERE, "blocked"), "w").close()  # past the point it looks for a cancel
    with open(os.path.join(HERE, "gate")) as f:
        fcntl.flock(f, fcntl.LOCK_SH)  # never released: the step never returns
    yield "second"
"""


async def test_a_stream_stuck_in_a_step_after_it_was_stopped_is_a_timeout_kill(
    backend: SubprocessBackend, recorder: Recorder, tmp_path: Path
) -> None:
    (tmp_path / "main.py").write_text(STUCK_STREAM)
    (tmp_path / "gate").touch()
    limits = Limits(timeout_s=0.5)
    await backend.create(SandboxSpec("s1", str(tmp_path), "main:handler", limits=limits))
    with open(tmp_path / "gate") as gate:
        fcntl.flock(gate, fcntl.LOCK_EX)
        stream = (await backend.invoke("s1", Request())).body
        assert await stream.__anext__() == b"first"
        await wait_for((tmp_path / "blocked").exists, what="the function blocked in its step")
        await stream.aclose()  # the caller left: the process is told, but is blocked in a step
        await wait_for(lambda: "Failed" in recorder.states("s1"), what="the stuck process ended")
    status = backend.status("s1")
    assert (status.state, status.reason) == (SandboxState.FAILED, "Timeout")
    assert "did not end within the 0.5s timeout" in status.message

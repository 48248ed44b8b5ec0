"""The crash record: a runtime that dies running a namespace sandbox's code names it next time.

Each "runtime" here is a fresh interpreter (the probe below) hosting a namespace backend on a
state directory; the test makes one of its sandboxes end the process, then opens the same state
directory as the next runtime would and reads the verdict.
"""

from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from isolation.base import SandboxSpec, SandboxState
from isolation.crashlog import Crash, fatal_signal, judge, probation, read_record
from isolation.errors import LoadError
from isolation.namespace import NamespaceBackend
from tests.conformance.support import HELLO, write_function

PROBE = """
import asyncio, json, sys
from isolation.base import Limits, SandboxSpec
from isolation.contract import Request
from isolation.namespace import NamespaceBackend

state, plan = sys.argv[1], json.loads(sys.argv[2])

async def main():
    backend = NamespaceBackend(state_dir=state)
    for sandbox_id, code, handler in plan.get("create", []):
        limits = Limits(concurrency=4, timeout_s=60)
        await backend.create(SandboxSpec(sandbox_id, code, handler, limits=limits))
    hung = [asyncio.ensure_future(backend.invoke(sid, Request(body=json.dumps(ev).encode())))
            for sid, ev in plan.get("hang", [])]
    while backend.threads()["busy"] < len(hung):
        await asyncio.sleep(0.001)  # until the hung calls hold their threads
    for sandbox_id, event in plan.get("crash", []):
        await backend.invoke(sandbox_id, Request(body=json.dumps(event).encode()))
    await backend.close()
    print("clean exit")

asyncio.run(main())
"""


def run_runtime(state: Path, plan: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, str(state), json.dumps(plan)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextmanager
def held(gate: Path) -> Iterator[None]:
    with open(gate) as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "runtime.state"


async def next_runtime(state: Path) -> NamespaceBackend:
    return NamespaceBackend(state_dir=str(state))


async def test_os_exit_at_invoke_names_the_culprit_and_it_is_never_loaded_again(
    state: Path,
) -> None:
    plan = {
        "create": [["culprit", HELLO, "main:crash"], ["bystander", HELLO, "main:handler"]],
        "crash": [["culprit", {"code": 3}]],
    }
    died = run_runtime(state, plan)
    assert died.returncode == 3, died.stderr
    backend = await next_runtime(state)
    try:
        crash = backend.last_crash
        assert crash is not None
        assert (crash.suspects, crash.culprits, crash.importing) == (("culprit",), ("culprit",), ())
        assert crash.rule == "the only sandbox running code"
        assert "no fatal signal" in crash.exit_status
        with pytest.raises(LoadError) as refused:
            await backend.create(SandboxSpec("culprit", HELLO, "main:handler"))
        assert refused.value.reason == "RuntimeCrash"
        assert "running a call" in refused.value.message
        assert backend.status("culprit").state is SandboxState.FAILED
        assert (await backend.create(SandboxSpec("bystander", HELLO, "main:handler"))).state is (
            SandboxState.RUNNING
        )
    finally:
        await backend.close()
    after_clean_exit = await next_runtime(state)
    try:
        assert after_clean_exit.last_crash is None, "a clean exit leaves nobody to blame"
        with pytest.raises(LoadError):  # the verdict is kept across restarts
            await after_clean_exit.create(SandboxSpec("culprit", HELLO, "main:handler"))
    finally:
        await after_clean_exit.close()


async def test_a_segfault_is_named_with_its_signal(state: Path, tmp_path: Path) -> None:
    source = "import ctypes\ndef handler(event, context):\n    return ctypes.string_at(0)\n"
    code = write_function(tmp_path / "segv", source)
    died = run_runtime(state, {"create": [["segv", code, "main:handler"]], "crash": [["segv", {}]]})
    assert died.returncode == -signal.SIGSEGV, died.stderr
    backend = await next_runtime(state)
    try:
        assert backend.last_crash is not None
        assert backend.last_crash.exit_status == "Segmentation fault"
        assert backend.last_crash.culprits == ("segv",)
    finally:
        await backend.close()


async def test_os_exit_at_import_names_the_importer(state: Path, tmp_path: Path) -> None:
    code = write_function(tmp_path / "fn", "import os\nos._exit(4)\n")
    plan = {"create": [["fine", HELLO, "main:handler"], ["importer", code, "main:handler"]]}
    died = run_runtime(state, plan)
    assert died.returncode == 4, died.stderr
    backend = await next_runtime(state)
    try:
        crash = backend.last_crash
        assert crash is not None
        assert (crash.culprits, crash.importing) == (("importer",), ("importer",))
        with pytest.raises(LoadError) as refused:
            await backend.create(SandboxSpec("importer", code, "main:handler"))
        assert refused.value.reason == "RuntimeCrash" and "importing" in refused.value.message
    finally:
        await backend.close()


async def test_two_running_blame_nobody_until_a_repeat_singles_one_out(
    state: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    hang = {"gate": str(gate)}
    with held(gate):
        first = run_runtime(state, {
            "create": [["crasher", HELLO, "main:crash"], ["waiter", HELLO, "main:gate"]],
            "hang": [["waiter", hang]],
            "crash": [["crasher", {"code": 5}]],
        })  # fmt: skip
        assert first.returncode == 5, first.stderr
        backend = await next_runtime(state)
        crash = backend.last_crash
        assert crash is not None
        assert sorted(crash.suspects) == ["crasher", "waiter"] and crash.culprits == ()
        assert backend._record.probation == {"crasher", "waiter"}
        await backend.close()
        second = run_runtime(state, {
            "create": [["crasher", HELLO, "main:crash"], ["other", HELLO, "main:gate"]],
            "hang": [["other", hang]],
            "crash": [["crasher", {"code": 5}]],
        })  # fmt: skip
        assert second.returncode == 5, second.stderr
    backend = await next_runtime(state)
    try:
        crash = backend.last_crash
        assert crash is not None
        assert sorted(crash.suspects) == ["crasher", "other"]
        assert crash.culprits == ("crasher",)
        assert "and the 1 before" in crash.rule
    finally:
        await backend.close()


def test_one_runtime_per_state_directory(state: Path) -> None:
    first = NamespaceBackend(state_dir=str(state))
    second = NamespaceBackend(state_dir=str(state))  # logs, and runs without a record
    assert second.last_crash is None
    assert first._record is not second._record
    first._record.close()


def crash(suspects: list[str], at: float, culprits: tuple[str, ...] = ()) -> Crash:
    return Crash(at, at, 1, "", tuple(suspects), (), culprits)


def test_judge() -> None:
    assert judge([], [], 100.0) == (frozenset(), "no sandbox was running code")
    assert judge(["a"], [], 100.0)[0] == {"a"}
    assert judge(["a", "b"], [], 100.0)[0] == frozenset()
    assert judge(["a", "b"], [crash(["a", "c"], 90.0)], 100.0)[0] == {"a"}
    # Narrowed over two earlier crashes, newest first.
    history = [crash(["a", "x"], 80.0), crash(["a", "b", "c"], 90.0)]
    assert judge(["a", "b", "d"], history, 100.0)[0] == {"a"}
    # Too long ago to compare, or nothing in common: nobody.
    assert judge(["a", "b"], [crash(["a"], 0.0)], 10_000.0)[0] == frozenset()
    assert judge(["a", "b"], [crash(["c"], 90.0)], 100.0)[0] == frozenset()


def test_probation_is_the_unjudged_suspects_of_the_latest_crash() -> None:
    assert probation([crash(["a", "b"], 90.0)], 100.0) == {"a", "b"}
    assert probation([crash(["a"], 90.0, culprits=("a",))], 100.0) == frozenset()
    assert probation([crash(["a", "b"], 0.0)], 10_000.0) == frozenset()


def test_record_bytes_and_fatal_report_parsing() -> None:
    assert read_record(b"") is None
    assert read_record(b"x" * 100) is None
    report = "Fatal Python error: Aborted\n\nThread 0x1 (most recent call first):\n"
    assert fatal_signal(report) == "Aborted"
    assert fatal_signal("") == ""

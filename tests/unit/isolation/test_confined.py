"""Attacker's tests of the subprocess boundary, on the backend itself (real processes, as root).

Each test runs the hostile function (tests/conformance/hostile) in confined sandboxes next to a
victim and checks that the attack is refused; containment tests check limits that include
children and that nothing of a sandbox outlives it. The same attacks run again on the real
cluster, inside a pool pod, in tests/integration/test_hostile.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from isolation.base import Limits, SandboxSpec, SandboxState
from isolation.boundary import BoundaryConfig
from isolation.contract import Request
from isolation.errors import LoadError, SandboxCrashed
from isolation.process import SubprocessBackend
from tests.conformance.conftest import Recorder
from tests.conformance.support import HELLO, OTHER, child_processes, wait_for

HOSTILE = str(Path(__file__).resolve().parents[2] / "conformance" / "hostile")
UIDS = range(210_000, 210_100)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="confining sandboxes needs root")


@pytest.fixture
def scratch_root() -> Iterator[str]:
    root = tempfile.mkdtemp(prefix="nest-scratch-test-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def backend(scratch_root: str) -> AsyncIterator[SubprocessBackend]:
    impl = SubprocessBackend(
        on_change=Recorder(),
        memory_poll_s=0.05,
        boundary=BoundaryConfig(uids=UIDS, scratch_root=scratch_root, max_processes=16),
    )
    await impl.start()
    yield impl
    await impl.close()
    assert child_processes() == []
    assert not [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real in UIDS]


async def call(backend: SubprocessBackend, sandbox: str, **event: Any) -> Any:
    response = await backend.invoke(sandbox, Request(body=json.dumps(event).encode()))
    assert response.status == 200, response.body
    return json.loads(response.body)


async def hostile(backend: SubprocessBackend, name: str = "attacker", **limits: Any) -> int:
    status = await backend.create(
        SandboxSpec(name, HOSTILE, "main:handler", limits=Limits(**limits))
    )
    assert status.pid is not None
    return status.pid


async def test_each_sandbox_is_its_own_unprivileged_principal(backend: SubprocessBackend) -> None:
    await hostile(backend, "a")
    await hostile(backend, "b")
    a, b = await call(backend, "a", op="identity"), await call(backend, "b", op="identity")
    assert a["Uid"].split()[0] != b["Uid"].split()[0]
    for who in (a, b):
        uid = int(who["Uid"].split()[0])
        assert uid in UIDS and who["Uid"].split() == [str(uid)] * 4  # real, effective, saved, fs
        assert who["Gid"].split() == [str(uid)] * 4 and who["Groups"] == ""
        for caps in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
            assert int(who[caps], 16) == 0, caps
        assert (who["NoNewPrivs"], who["Seccomp"], who["dumpable"]) == ("1", "2", 0)
        assert who["tmpdir"] and stat.S_IMODE(os.stat(who["tmpdir"]).st_mode) == 0o700
        assert os.stat(who["tmpdir"]).st_uid == uid
        assert set(who["env"]) <= {"HOME", "TMPDIR", "PATH", "LANG", "LC_ALL", "PYTHONUNBUFFERED"}


async def test_a_sandbox_cannot_read_or_trace_a_neighbour(backend: SubprocessBackend) -> None:
    await hostile(backend)
    victim = (await backend.create(SandboxSpec("victim", HELLO, "main:handler"))).pid
    memory = await call(backend, "attacker", op="read_memory", pid=victim)
    assert memory["proc_mem"]["ok"] is False and memory["process_vm_readv"]["ok"] is False
    assert memory["process_vm_readv"]["errno"] == "EPERM"  # seccomp, before any uid check
    traced = await call(backend, "attacker", op="ptrace_pid", pid=victim)
    assert traced == {"ok": False, "errno": "EPERM"}
    for path in (f"/proc/{victim}/environ", f"/proc/{victim}/cwd/main.py", f"{OTHER}/main.py"):
        assert (await call(backend, "attacker", op="read_file", path=path))["ok"] is False, path


async def test_a_sandbox_cannot_signal_anything_outside_itself(backend: SubprocessBackend) -> None:
    await hostile(backend)
    victim = (await backend.create(SandboxSpec("victim", HELLO, "main:handler"))).pid
    for pid in (victim, backend.zygote_pid, os.getpid()):
        assert await call(backend, "attacker", op="signal_pid", pid=pid) == {
            "ok": False, "errno": "EPERM",
        }  # fmt: skip
    assert backend.status("victim").state is SandboxState.RUNNING


async def test_a_sandbox_writes_only_its_scratch_directory(
    backend: SubprocessBackend, tmp_path: Path
) -> None:
    await hostile(backend)
    scratch = (await call(backend, "attacker", op="identity"))["tmpdir"]
    assert (await call(backend, "attacker", op="write_file", path=f"{scratch}/ok"))["ok"]
    pycache = backend._zygote.pycache
    for path in (f"{HOSTILE}/main.py", f"{pycache}/evil.pyc", "/tmp/nest-evil", f"{HELLO}/x.py"):
        assert (await call(backend, "attacker", op="write_file", path=path))["ok"] is False, path
    assert not os.path.exists("/tmp/nest-evil")
    await backend.remove("attacker")
    assert not os.path.exists(scratch), "the scratch directory goes with the sandbox"


async def test_a_sandbox_cannot_reach_a_socket_of_the_runtime(backend: SubprocessBackend) -> None:
    directory = tempfile.mkdtemp()
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "control.sock")
    old = os.umask(0o177)
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.umask(old)
    server.listen()
    try:
        await hostile(backend)
        refused = await call(backend, "attacker", op="connect_unix", path=path)
        assert refused["ok"] is False
    finally:
        server.close()
        shutil.rmtree(directory)


async def test_namespaces_and_mounts_are_refused(backend: SubprocessBackend) -> None:
    await hostile(backend)
    assert await call(backend, "attacker", op="unshare", what="user") == {
        "ok": False, "errno": "EPERM",
    }  # fmt: skip
    assert (await call(backend, "attacker", op="unshare", what="mount"))["ok"] is False
    assert (await call(backend, "attacker", op="mount"))["ok"] is False


async def test_a_memory_spike_ends_in_oomkilled_within_the_limit(
    backend: SubprocessBackend,
) -> None:
    await hostile(backend, memory_mb=64)
    principals = backend.principals
    assert principals is not None
    try:  # either the kernel kills it (the call fails) or the allocation fails (a 500)
        response = await backend.invoke("attacker", Request(body=b'{"op": "spike", "mb": 400}'))
        assert response.status == 500 and b"MemoryError" in response.body
    except SandboxCrashed:
        pass
    await wait_for(lambda: backend.status("attacker").state is SandboxState.FAILED, 10)
    assert backend.status("attacker").reason == "OOMKilled"
    cgroup = principals._principals["attacker"].cgroup
    if cgroup is not None:  # the kernel's own high-water mark: never past 1.25x the limit
        peak = int(Path(cgroup.dirs["memory"], "memory.max_usage_in_bytes").read_text())
        assert peak <= 1.25 * 64 * 1024 * 1024


async def test_a_fork_bomb_is_stopped_and_leaves_nothing(backend: SubprocessBackend) -> None:
    await hostile(backend)
    bomb = await call(backend, "attacker", op="fork_bomb")
    assert bomb["stopped_by"] == "EAGAIN" and bomb["made"] < 16
    assert backend.status("attacker").state is SandboxState.RUNNING
    await backend.remove("attacker")  # the fixture checks no process of any sandbox uid is left


async def test_a_child_holding_memory_is_counted_and_dies_with_its_sandbox(
    backend: SubprocessBackend,
) -> None:
    await hostile(backend, memory_mb=128)
    principals = backend.principals
    assert principals is not None
    before = principals.memory_bytes("attacker") or 0
    assert await call(backend, "attacker", op="orphan_holding_memory", mb=48) == {
        "left": "a grandchild"
    }
    if principals.cgroup_root is not None:
        await wait_for(
            lambda: (principals.memory_bytes("attacker") or 0) - before > 40 << 20, 10,
            "the grandchild's memory is charged to the sandbox",
        )  # fmt: skip
    uid = principals._principals["attacker"].uid
    assert len([p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid]) == 2
    await backend.remove("attacker")
    assert not [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid]


async def test_cpu_is_shared_in_proportion_to_requests(backend: SubprocessBackend) -> None:
    await hostile(backend, "small", cpu_millis=100)
    await hostile(backend, "big", cpu_millis=400)
    principals = backend.principals
    assert principals is not None
    if principals.cgroup_root is None:
        pytest.skip("no writable cgroup here: CPU shares need one")
    shares = {
        name: int(Path(principals._principals[name].cgroup.dirs["cpu"], "cpu.shares").read_text())  # type: ignore[union-attr]
        for name in ("small", "big")
    }
    assert shares == {"small": 102, "big": 409}


async def test_a_boundary_that_cannot_be_set_up_fails_the_sandbox(scratch_root: str) -> None:
    impl = SubprocessBackend(
        boundary=BoundaryConfig(uids=range(210_200, 210_201), scratch_root=scratch_root)
    )
    await impl.start()
    try:
        await impl.create(SandboxSpec("one", HELLO, "main:handler"))
        with pytest.raises(LoadError, match="no free sandbox uid"):
            await impl.create(SandboxSpec("two", HELLO, "main:handler"))
        assert impl.status("two").state is SandboxState.FAILED
    finally:
        await impl.close()


async def test_a_reduced_boundary_is_said_never_silent(scratch_root: str) -> None:
    """A pod without Landlock (or a writable cgroup) still runs sandboxes, and says so."""
    impl = SubprocessBackend(
        boundary=BoundaryConfig(
            uids=range(210_300, 210_310), scratch_root=scratch_root, landlock=False, cgroups=False
        )
    )
    await impl.start()
    try:
        await impl.create(SandboxSpec("reduced", HOSTILE, "main:handler"))
        assert impl.principals is not None
        confined, message = impl.principals.summary("reduced")
        assert confined is False
        assert "Landlock unavailable" in message and "no writable cgroup" in message
        me = await call(impl, "reduced", op="identity")
        assert int(me["CapEff"], 16) == 0 and me["Seccomp"] == "2"  # the rest still holds
    finally:
        await impl.close()

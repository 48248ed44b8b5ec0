"""The zygote's memory-sharing measures: lean fork, filled pools, rehearsals, the lean protocol.

Each measure must leave sandboxes exactly as they were in behaviour: their own random state,
their spec read from their own channel, and a zygote that the rehearsals left unconfined and
unchanged.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from isolation import sharing
from isolation.base import SandboxSpec
from isolation.child import read_spec, spec_frame
from isolation.contract import Request
from isolation.ipc import encode_frame, read_frame_blocking
from isolation.process import SubprocessBackend
from isolation.zygote import received_fd
from tests.conformance.support import child_processes

RANDOM_FUNCTION = """\
import random


def handler(event, context):
    return {"bits": random.getrandbits(64)}
"""


@pytest.fixture
async def backend() -> AsyncIterator[SubprocessBackend]:
    impl = SubprocessBackend()
    await impl.start()
    yield impl
    await impl.close()
    assert child_processes() == []


async def test_no_two_sandboxes_share_the_random_state(
    backend: SubprocessBackend, tmp_path: Path
) -> None:
    (tmp_path / "main.py").write_text(RANDOM_FUNCTION)
    seen = set()
    for n in range(3):
        await backend.create(SandboxSpec(f"r{n}", str(tmp_path), "main:handler"))
        seen.add(json.loads((await backend.invoke(f"r{n}", Request())).body)["bits"])
    assert len(seen) == 3


async def test_a_large_spec_reaches_the_sandbox_through_its_channel(
    backend: SubprocessBackend,
) -> None:
    from tests.conformance.support import HELLO

    big = "x" * (1 << 20)  # far more than a socket buffer holds
    await backend.create(SandboxSpec("big", HELLO, "main:environment", env={"NEST_EXAMPLE": big}))
    assert json.loads((await backend.invoke("big", Request())).body)["env"] == big


def test_filler_takes_exactly_one_block_of_each_size() -> None:
    for size in (16, 32, *range(48, 513, 16)):
        obj = sharing.filler(size)
        assert obj is not None
        expected = 24 if size == 32 else size  # a float (24 bytes) lands in the 32-byte class
        assert sys.getsizeof(obj) == expected
    assert sharing.filler(40) is None


def test_available_blocks_are_parsed_from_the_allocator_statistics() -> None:
    text = (
        "class   size   num pools   blocks in use  avail blocks\n"
        "-----   ----   ---------   -------------  ------------\n"
        "    0     16           1              43           978\n"
        "    5     96           6             865           155\n"
        "# arenas allocated total           =                    3\n"
    )
    assert sharing.parse_available(text) == {16: 978, 96: 155}


def test_filling_the_pools_leaves_fewer_holes() -> None:
    before = sum(sharing._available_blocks().values())
    assert before > 0
    assert sharing.fill_pools() > 0
    assert sum(sharing._available_blocks().values()) < before


def test_a_process_with_threads_forks_the_ordinary_way() -> None:
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        assert not sharing.single_threaded()
        pid, lean = sharing.lean_fork()
        if pid == 0:
            os._exit(0)
        assert not lean
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        release.set()
        thread.join()


def test_received_fd_keeps_the_first_descriptor_and_closes_the_rest() -> None:
    first, second = os.pipe()
    data = first.to_bytes(4, sys.byteorder) + second.to_bytes(4, sys.byteorder)
    assert received_fd([(socket.SOL_SOCKET, socket.SCM_RIGHTS, data)]) == first
    os.fstat(first)
    with pytest.raises(OSError):
        os.fstat(second)
    os.close(first)
    assert received_fd([]) is None


def test_the_spec_is_the_first_frame_and_nothing_past_it_is_consumed() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.sendall(spec_frame({"id": "s"}) + encode_frame({"t": "invoke", "id": 1}, b"body"))
        assert read_spec(theirs) == {"id": "s"}
        with theirs.makefile("rb") as stream:
            assert read_frame_blocking(stream) == ({"t": "invoke", "id": 1}, b"body")


def test_a_missing_or_wrong_first_frame_is_no_spec() -> None:
    ours, theirs = socket.socketpair()
    with theirs:
        ours.sendall(encode_frame({"t": "invoke"}))
        assert read_spec(theirs) is None
        ours.close()
        assert read_spec(theirs) is None  # EOF


CHECK_REHEARSALS = """
import os, sys, tempfile
from isolation import confine, rehearse
from isolation.boundary import BoundaryConfig, read_paths_for
confine.warm(read_paths_for(BoundaryConfig(), ()))
cwd, path, modules = os.getcwd(), list(sys.path), set(sys.modules)
rehearse.confinement(rounds=2)
rehearse.sandbox_sessions(None, rounds=2)
rehearse.after_fork_handlers(rounds=2)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(repr({
    "seccomp": status["Seccomp"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "cwd": os.getcwd() == cwd,
    "path": sys.path == path,
    "leftover_modules": sorted(m for m in set(sys.modules) - modules if "rehearsal" in m),
    "leftover_dirs": [d for d in os.listdir(tempfile.gettempdir()) if "nest-rehearsal" in d],
    "uid": os.getuid(),
    "env": "NEST_REHEARSAL" in os.environ,
}))
"""


def test_rehearsals_leave_the_zygote_unconfined_and_as_it_was(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[3])
    out = subprocess.run(
        [sys.executable, "-c", CHECK_REHEARSALS],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": root, "TMPDIR": str(tmp_path)},
    )
    result = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert result == {
        "seccomp": "0",
        "no_new_privs": "0",
        "cwd": True,
        "path": True,
        "leftover_modules": [],
        "leftover_dirs": [],
        "uid": os.getuid(),
        "env": False,
    }


SPEC_FUNCTION = """\
import helper


def handler(event, context):
    return {
        "loader": type(__spec__.loader).__name__,
        "file": __file__,
        "helper": helper.__file__,
        "source": __spec__.loader.get_source(__name__).splitlines()[0],
    }
"""


async def test_a_function_runs_its_own_modules_as_the_zygote_loaded_them(
    backend: SubprocessBackend, tmp_path: Path
) -> None:
    (tmp_path / "main.py").write_text(SPEC_FUNCTION)
    (tmp_path / "helper.py").write_text("VALUE = 1\n")
    await backend.create(SandboxSpec("c", str(tmp_path), "main:handler"))
    seen = json.loads((await backend.invoke("c", Request())).body)
    assert seen == {
        "loader": "_Loader",
        "file": str(tmp_path / "main.py"),
        "helper": str(tmp_path / "helper.py"),
        "source": "import helper",
    }

"""Starting through the shim reports unrunnable programs; the sweep finds only marked processes."""

import os
import sys
from pathlib import Path

import psutil
import pytest

from nest_cluster.runner.env import NODE_MARKER
from nest_cluster.runner.process import Launch, StartError, marked, start, sweep


def _launch(tmp_path: Path, argv: list[str], node_dir: str = "/nowhere") -> Launch:
    env = {"PATH": os.environ["PATH"], NODE_MARKER: node_dir}
    return Launch(argv, env, None, [], tmp_path / "c.log", isolate=False)


def test_missing_program_names_the_executable(tmp_path: Path) -> None:
    with pytest.raises(
        StartError, match='"nest-no-such-program": executable file not found'
    ) as err:
        start(_launch(tmp_path, ["nest-no-such-program"]))
    assert err.value.code == 127


def test_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(StartError, match="permission denied") as err:
        start(_launch(tmp_path, [str(script)]))
    assert err.value.code == 126


def test_output_goes_to_the_log(tmp_path: Path) -> None:
    popen = start(_launch(tmp_path, [sys.executable, "-c", "print('hello from the container')"]))
    assert popen.wait() == 0
    assert (tmp_path / "c.log").read_text() == "hello from the container\n"


def test_marked() -> None:
    assert marked({NODE_MARKER: "/a/node"}, "/a/node")
    assert not marked({NODE_MARKER: "/a/node2"}, "/a/node")
    assert not marked({}, "/a/node")


def test_sweep_kills_marked_processes_only(tmp_path: Path) -> None:
    node_dir = str(tmp_path / "node")
    victim = start(_launch(tmp_path, ["sleep", "600"], node_dir))
    bystander = start(_launch(tmp_path, ["sleep", "600"], node_dir + "-other"))
    try:
        assert sweep(node_dir, grace=5.0) == [victim.pid]
        victim.wait(timeout=5)  # already reaped by the sweep: only "gone" is observable
        assert not psutil.pid_exists(victim.pid)
        assert psutil.Process(bystander.pid).is_running()
    finally:
        bystander.kill()
        bystander.wait()

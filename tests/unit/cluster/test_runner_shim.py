"""The shim on the real kernel (root only): PID namespaces, signals, credentials, mounts.

Each test starts a throw-away container through `process.start` exactly as the runner does, with
no API server: what the program sees is read back from its log.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from nest_cluster.runner import process
from nest_cluster.runner.env import NODE_MARKER
from nest_cluster.runner.security import CAPABILITIES, DEFAULT_CAPABILITIES, Security, mask
from nest_cluster.runner.volumes import Mount
from tests.kube import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and credentials need root")
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
ENV = {"PATH": "/usr/bin:/bin", NODE_MARKER: "/nowhere"}
STATUS = "print(open('/proc/self/status').read(), flush=True)"


def _start(tmp_path: Path, argv: list[str], **kw: object) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"c{len(list(tmp_path.glob('c*.log')))}.log"
    launch = process.Launch(argv, ENV, None, kw.pop("mounts", []), log, True, **kw)  # type: ignore[arg-type]
    return process.start(launch), log


def _status(log: Path) -> dict[str, str]:
    lines = [line.split(":", 1) for line in log.read_text().splitlines() if ":\t" in line]
    return {k: v.strip() for k, v in lines}


def test_the_program_is_pid_1_and_sees_only_its_namespace(tmp_path: Path) -> None:
    program = "import os; print(os.getpid(), [p for p in os.listdir('/proc') if p.isdigit()])"
    popen, log = _start(tmp_path, [PY, "-c", program])
    assert popen.wait(timeout=30) == 0
    assert log.read_text().strip() == "1 ['1']"


def test_exit_codes_and_signals_are_the_programs(tmp_path: Path) -> None:
    popen, _ = _start(tmp_path, ["sh", "-c", "exit 7"])
    assert popen.wait(timeout=30) == 7
    handler = (
        "import signal, sys\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )
    popen, log = _start(tmp_path, [PY, "-c", handler])
    wait_for(lambda: "ready" in log.read_text(), what="SIGTERM handler installed")
    process.terminate(popen.pid, isolate=True)  # to the monitor, which forwards it
    assert popen.wait(timeout=30) == 3
    popen, _ = _start(tmp_path, ["sleep", "600"])
    process.signal_group(popen.pid, signal.SIGKILL)
    assert popen.wait(timeout=30) == -signal.SIGKILL


def test_the_program_dies_with_its_monitor(tmp_path: Path) -> None:
    popen, _ = _start(tmp_path, ["sleep", "600"])
    program = wait_for(lambda: psutil.Process(popen.pid).children(), what="the program")[0]
    os.kill(popen.pid, signal.SIGKILL)  # `kill -9 <containerID>`
    popen.wait(timeout=30)
    wait_for(lambda: not program.is_running() or program.status() == "zombie", what="gone")


def test_default_credentials_are_containerds(tmp_path: Path) -> None:
    popen, log = _start(tmp_path, [PY, "-c", STATUS])
    assert popen.wait(timeout=30) == 0
    status = _status(log)
    assert int(status["CapEff"], 16) == mask(DEFAULT_CAPABILITIES)
    assert int(status["CapBnd"], 16) == mask(DEFAULT_CAPABILITIES)
    assert int(status["CapInh"], 16) == 0 and status["NoNewPrivs"] == "0"
    assert status["Uid"].split() == ["0"] * 4


def test_users_groups_capabilities_and_no_new_privs(tmp_path: Path) -> None:
    caps = frozenset({CAPABILITIES["NET_BIND_SERVICE"]})
    creds = Security(uid=1234, gid=5678, groups=(2000, 4000), capabilities=caps,
                     no_new_privs=True)  # fmt: skip
    popen, log = _start(tmp_path, [PY, "-c", STATUS], security=creds)
    assert popen.wait(timeout=30) == 0
    status = _status(log)
    assert status["Uid"].split() == ["1234"] * 4 and status["Gid"].split() == ["5678"] * 4
    assert status["Groups"].split() == ["2000", "4000"]
    # Not root: execve leaves nothing effective; the bounding set is the container's.
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert int(status["CapBnd"], 16) == mask(caps)
    assert status["NoNewPrivs"] == "1"


def test_read_only_root_but_writable_volumes_and_a_minimal_dev(tmp_path: Path) -> None:
    volume = tmp_path / "vol"
    volume.mkdir()
    script = (
        "touch /nest-ro-probe 2>/dev/null && echo root-writable;"
        " echo hi > /scratch/f && echo volume-writable;"
        " ls /dev | tr '\\n' ' '; echo;"
        " echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo proc-sys-writable;"
        " touch /sys/nest 2>/dev/null && echo sys-writable; true"
    )
    creds = Security(read_only_root=True)
    popen, log = _start(tmp_path, ["sh", "-c", script], security=creds,
                        mounts=[Mount(str(volume), "/scratch", False)],
                        readonly=["/sys"])  # fmt: skip
    assert popen.wait(timeout=30) == 0
    out = log.read_text()
    assert "root-writable" not in out and "volume-writable" in out
    assert (volume / "f").read_text() == "hi\n"
    devices = set(out.splitlines()[1].split())
    assert {"null", "zero", "urandom", "shm", "pts", "fd"} <= devices
    assert not any(d.startswith(("vd", "sd", "nvme", "loop")) for d in devices)
    assert "proc-sys-writable" not in out and "sys-writable" not in out
    assert not Path("/nest-ro-probe").exists()


def test_volumes_may_cover_system_mounts_and_name_host_devices(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    (shm / "shared").write_text("from the volume")
    full = tmp_path / "full"  # mount points are made on the host: keep them in tmp_path
    mounts = [Mount(str(shm), "/dev/shm", False), Mount("/dev/full", str(full), True)]
    script = f"cat /dev/shm/shared; echo; test -c {full} && echo device"
    popen, log = _start(tmp_path, ["sh", "-c", script], mounts=mounts)
    assert popen.wait(timeout=30) == 0
    assert log.read_text().splitlines() == ["from the volume", "device"]


MARKER = "import time; time.sleep(600)  # nest-shim-marker"
FIND = (
    "import os\n"
    "found = [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()\n"
    "         and 'nest-shim-marker' in open(f'/proc/{p}/cmdline').read()]\n"
)


def test_containers_of_a_shared_pid_namespace_see_each_other(tmp_path: Path) -> None:
    pause = process.start_pause(ENV, [])
    started: list[subprocess.Popen[bytes]] = [pause]
    try:
        ns = process.pid_namespace(pause.pid)
        first, _ = _start(tmp_path, [PY, "-c", MARKER], pid_ns=ns)
        started.append(first)
        second, log = _start(tmp_path, [PY, "-c", FIND + "print(os.getpid(), found)"], pid_ns=ns)
        assert second.wait(timeout=30) == 0
        own, found = log.read_text().split(" ", 1)
        # PID 1 is the pause process: neither container is, and each sees the other.
        assert own != "1" and found.strip() not in ("[]", "[1]")
        assert len(json.loads(found)) == 1
    finally:
        for popen in started:
            process.signal_group(popen.pid, signal.SIGKILL)
            popen.wait()


def test_exec_enters_the_containers_namespaces_with_its_credentials(tmp_path: Path) -> None:
    creds = Security(uid=1234, gid=1234, no_new_privs=True)
    container, _ = _start(tmp_path, [PY, "-c", MARKER], security=creds)
    try:
        wait_for(lambda: psutil.Process(container.pid).children(), what="the program")
        check = FIND + (
            "status = open('/proc/self/status').read()\n"
            "ok = found == [1] and 'NoNewPrivs:\\t1' in status and os.getuid() == 1234\n"
            "raise SystemExit(0 if ok else 1)\n"
        )
        assert process.exec_in(container.pid, [PY, "-c", check], ENV, creds, [], 30) == 0
        assert process.exec_in(container.pid, ["false"], ENV, creds, [], 30) == 1
    finally:
        process.signal_group(container.pid, signal.SIGKILL)
        container.wait()


def test_a_containers_pid_translates_to_the_hosts(tmp_path: Path) -> None:
    popen, _ = _start(tmp_path, ["sleep", "600"])
    try:
        program = wait_for(lambda: psutil.Process(popen.pid).children(), what="the program")[0]
        assert process.host_pid(popen.pid, 1) == program.pid
        assert process.host_pid(popen.pid, 2) is None
    finally:
        process.signal_group(popen.pid, signal.SIGKILL)
        popen.wait()
    assert process.host_pid(popen.pid, 1) is None  # the namespace is gone with the container


def test_start_failures_are_still_reported(tmp_path: Path) -> None:
    with pytest.raises(process.StartError, match="executable file not found") as err:
        _start(tmp_path, ["nest-no-such-program"])
    assert err.value.code == 127


def test_a_runner_started_with_the_old_code_still_runs_containers(tmp_path: Path) -> None:
    """A runner keeps its code until restarted but runs shim.py anew for every container."""
    spec_r, spec_w = os.pipe()
    err_r, err_w = os.pipe()
    popen = subprocess.Popen(
        [sys.executable, "-I", "-S", str(process.SHIM), str(spec_r), str(err_w)],
        pass_fds=(spec_r, err_w), stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    os.close(spec_r)
    os.close(err_w)
    (tmp_path / "f").write_text("legacy")
    with os.fdopen(spec_w, "w") as f:
        target = tmp_path / "target"
        mounts = [{"source": str(tmp_path), "target": str(target), "read_only": True}]
        json.dump({"argv": ["cat", f"{target}/f"], "env": ENV, "cwd": None,
                   "isolate": True, "mounts": mounts}, f)  # fmt: skip
    assert os.fdopen(err_r, "rb").read() == b""
    out, _ = popen.communicate(timeout=30)
    assert (popen.returncode, out) == (0, b"legacy")

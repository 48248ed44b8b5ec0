"""Termination messages follow the kubelet: the file's last 4 KiB, else (on failure, if asked)
the log's last 80 lines / 2 KiB; and the image stays reachable for a uid in a barred group."""

import os
import stat
from pathlib import Path

from nest_cluster.runner import security, termination
from nest_cluster.runner.cgroups import Support
from nest_cluster.runner.containers import Ended, Host, PodSandbox
from nest_cluster.runner.process import Launch
from nest_cluster.runner.security import Security
from nest_cluster.runner.volumes import Mount

FALLBACK = {"name": "c", "terminationMessagePolicy": "FallbackToLogsOnError"}
FILE = {"name": "c", "terminationMessagePolicy": "File"}


def _file(tmp_path: Path, data: bytes) -> Path:
    path = termination.create_file(tmp_path / "containers" / "c")
    path.write_bytes(data)
    return path


def _log(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "c.log"
    path.write_bytes(data)
    return path


def test_the_file_is_per_instance_empty_and_writable_by_anyone(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        first = termination.create_file(tmp_path / "c")
        second = termination.create_file(tmp_path / "c")
    finally:
        os.umask(old)
    assert first != second and first.parent == second.parent == tmp_path / "c"
    assert len(first.name) == 8 and int(first.name, 16) >= 0
    assert stat.S_IMODE(first.stat().st_mode) == 0o666 and first.read_bytes() == b""


def test_the_message_is_the_files_content_and_the_file_goes(tmp_path: Path) -> None:
    path = _file(tmp_path, b'{"ref": "r@sha256:1"}\n')
    log = _log(tmp_path, b"progress\n")
    assert termination.collect(FALLBACK, 1, path, log) == '{"ref": "r@sha256:1"}\n'
    assert not path.exists()


def test_a_long_file_keeps_its_last_4096_bytes(tmp_path: Path) -> None:
    path = _file(tmp_path, b"a" * 10 + b"b" * 4096)
    assert termination.collect(FILE, 0, path, None) == "b" * 4096


def test_file_policy_never_reads_the_log(tmp_path: Path) -> None:
    log = _log(tmp_path, b"boom\n")
    assert termination.collect(FILE, 1, _file(tmp_path, b""), log) == ""
    assert termination.collect(FILE, 1, None, log) == ""


def test_fallback_reads_the_log_only_on_failure_with_nothing_written(tmp_path: Path) -> None:
    output = "step 1\nTraceback: boom\n"
    log = _log(tmp_path, output.encode())
    assert termination.collect(FALLBACK, 0, _file(tmp_path, b""), log) == ""
    assert termination.collect(FALLBACK, 2, _file(tmp_path, b""), log) == output
    # No file at all (a runner that is not root gives none): the kubelet's "no such mount".
    assert termination.collect(FALLBACK, 137, None, log) == output
    # A container that never started has no output of its own to fall back to.
    assert termination.collect(FALLBACK, 128, None, log, started=False) == ""


def test_the_log_tail_is_80_lines_then_2048_bytes(tmp_path: Path) -> None:
    lines = b"".join(b"line %d\n" % i for i in range(200))
    tail = termination.collect(FALLBACK, 1, None, _log(tmp_path, lines))
    assert tail.splitlines() == [f"line {i}" for i in range(120, 200)]
    wide = b"".join(b"%03d" % i + b"x" * 96 + b"\n" for i in range(50))
    tail = termination.collect(FALLBACK, 1, None, _log(tmp_path, wide))
    assert len(tail.encode()) == 2048 and tail.endswith("049" + "x" * 96 + "\n")
    # A last line without its newline still counts.
    assert termination.log_tail(b"a\nb\nc", lines=2) == b"b\nc"


def test_an_unreadable_file_is_reported_instead(tmp_path: Path) -> None:
    path = tmp_path / "containers" / "c" / "dir"
    path.mkdir(parents=True)  # reading a directory fails, as an unreadable file would
    message = termination.collect(FALLBACK, 1, path, _log(tmp_path, b"x\n"))
    assert message.startswith(f"Error on reading termination log {path}:")


def test_invalid_utf8_is_replaced_not_fatal(tmp_path: Path) -> None:
    assert termination.collect(FILE, 0, _file(tmp_path, b"ok \xff\n"), None) == "ok \ufffd\n"


def test_each_container_keeps_its_share_of_12k_per_pod() -> None:
    assert termination.pod_share(1) == 12288 and termination.pod_share(4) == 3072
    assert termination.cut("é" * 2000, 3072) == "é" * 1536
    assert termination.cut("é" * 2000, 3071) == "é" * 1535  # never half a character
    assert termination.cut("short", 3072) == "short"


def test_the_mount_is_read_write_at_the_path_and_ordered_after_its_parents() -> None:
    mounts = [Mount("/v/dev", "/dev", False), Mount("/v/x", "/x/y/z/w", True)]
    out = termination.with_message_mount(mounts, {"name": "c"}, Path("/f/1"))
    assert out[1] == Mount("/f/1", "/dev/termination-log", False)
    assert [m.target for m in out] == ["/dev", "/dev/termination-log", "/x/y/z/w"]
    custom = {"name": "c", "terminationMessagePath": "/tmp/result"}
    assert termination.with_message_mount([], custom, Path("/f/2"))[0].target == "/tmp/result"
    unset = {"terminationMessagePath": ""}
    assert termination.with_message_mount(mounts, unset, Path("/f")) == mounts


# -- reaching the image ------------------------------------------------------------------------


def _stat(modes: dict[str, tuple[int, int, int]]) -> object:
    def fake(path: str) -> os.stat_result:
        if path not in modes:
            raise FileNotFoundError(path)
        mode, uid, gid = modes[path]
        return os.stat_result((stat.S_IFDIR | mode, 0, 0, 2, uid, gid, 0, 0, 0, 0))

    return fake


def test_only_a_group_that_takes_away_what_others_have_is_barred() -> None:
    assert security.barred(0o701, 0, 0, 65532, {0})  # /root here, for containerd's gid 0
    assert not security.barred(0o701, 0, 0, 65532, {65532})  # others may search
    assert not security.barred(0o701, 0, 0, 0, {0})  # the owner's bits apply
    assert not security.barred(0o711, 0, 0, 65532, {0})  # the group may search
    assert not security.barred(0o700, 0, 0, 65532, {0})  # nobody else may: not ours to open


def test_reach_names_barred_directories_and_only_the_entries_on_the_way() -> None:
    modes = {
        "/root": (0o701, 0, 0), "/root/.pyenv": (0o755, 0, 0), "/root/.pyenv/v": (0o701, 0, 0),
        "/work": (0o755, 0, 0),
    }  # fmt: skip
    paths = ["/root/.pyenv/v/bin/python3", "/root/.pyenv/v", "/work/venv/bin/python"]
    got = security.reach(paths, 65532, {0}, stat=_stat(modes))  # type: ignore[arg-type]
    assert got == [
        security.Reach("/root", 0o711, (".pyenv",)),
        security.Reach("/root/.pyenv/v", 0o711, ("bin",)),
    ]
    assert security.reach(paths, 65532, {65532}, stat=_stat(modes)) == []  # type: ignore[arg-type]
    assert security.reach(paths, 0, {0}, stat=_stat(modes)) == []  # type: ignore[arg-type]


def test_the_image_is_this_installation_and_the_program() -> None:
    import sys

    paths = security.image_paths("python3", str(Path(sys.executable).parent))
    assert sys.prefix in paths and os.path.realpath(sys.executable) in paths
    assert str(Path(sys.executable).parent / "python3") in paths
    assert "/bin/sh" in security.image_paths("/bin/sh", None)


# -- what the pod sandbox gives an instance ---------------------------------------------------


def _sandbox(tmp_path: Path, isolate: bool) -> PodSandbox:
    host = Host("node", isolate, Support(problem="no cgroups in this test"), last_cap=40)
    return PodSandbox(host, {"metadata": {"uid": "u-1"}, "spec": {}}, tmp_path / "containers")


def _launch(sandbox: PodSandbox, tmp_path: Path, creds: Security) -> Launch:
    volume = [Mount(str(tmp_path / "v"), "/tmp", False)]
    return sandbox.launch({"name": "c"}, creds, 0, ["python"], {"PATH": ""}, volume, tmp_path / "l")


def test_an_isolated_instance_gets_its_own_file_which_its_end_hands_back(tmp_path: Path) -> None:
    sandbox = _sandbox(tmp_path, isolate=True)
    launch = _launch(sandbox, tmp_path, Security())
    (file,) = (tmp_path / "containers" / "c").iterdir()
    assert [(m.source, m.target, m.read_only) for m in launch.mounts] == [
        (str(tmp_path / "v"), "/tmp", False), (str(file), "/dev/termination-log", False),
    ]  # fmt: skip
    assert launch.reach == []  # root reaches everything
    assert sandbox.ended("c") == Ended(False, file)
    assert sandbox.ended("c") == Ended()


def test_group_0_is_shown_the_way_to_the_image_where_it_is_barred(tmp_path: Path) -> None:
    creds = Security(uid=65532, gid=0, capabilities=frozenset())
    launch = _launch(_sandbox(tmp_path, isolate=True), tmp_path, creds)
    barred = security.reach(security.image_paths("python", ""), 65532, {0})
    assert launch.reach == barred  # /root on this host; [] where the installation is elsewhere


def test_without_isolation_there_is_no_file_and_no_mount(tmp_path: Path) -> None:
    sandbox = _sandbox(tmp_path, isolate=False)
    launch = _launch(sandbox, tmp_path, Security())
    assert [m.target for m in launch.mounts] == ["/tmp"] and launch.reach == []
    assert not (tmp_path / "containers").exists()
    assert sandbox.ended("c") == Ended(False, None)

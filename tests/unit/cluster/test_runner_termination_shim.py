"""On the real kernel (root only): a container writes its own termination file, and a uid that
containerd puts in group 0 still runs this installation's python.

Containers start through `process.start` exactly as the runner starts them, with no API server.
"""

import json
import os
import sys
from pathlib import Path

import pytest

from nest_cluster.runner import process, security, termination
from nest_cluster.runner.env import NODE_MARKER
from nest_cluster.runner.security import Security

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and credentials need root")
# The Job's user: runAsUser 65532 without a group, so gid 0 (not in the host's passwd), no caps.
JOB_USER = Security(uid=65532, gid=0, capabilities=frozenset(), no_new_privs=True,
                    read_only_root=True)  # fmt: skip
# This installation's interpreter, as the `python` of deploy/'s `image: nest:latest` resolves.
VENV_PY = str(Path(sys.executable).parent / "python")


def _run(tmp_path: Path, argv: list[str], container: dict[str, str], reach: bool) -> Path:
    """Run one container to completion as the runner would launch it; its message file."""
    env = {"PATH": f"{Path(VENV_PY).parent}:/usr/bin:/bin", NODE_MARKER: "/nowhere"}
    message = termination.create_file(tmp_path / "containers" / "c")
    mounts = termination.with_message_mount([], container, message)
    paths = security.image_paths(argv[0], env["PATH"])
    reached = security.reach(paths, JOB_USER.uid, {JOB_USER.gid}) if reach else []
    log = tmp_path / "c.log"
    launch = process.Launch(argv, env, None, mounts, log, True, JOB_USER, reach=reached)
    popen = process.start(launch)
    assert popen.wait(timeout=60) == 0, log.read_text()
    return message


def test_a_non_root_container_writes_its_own_message_on_a_read_only_root(tmp_path: Path) -> None:
    script = 'echo -n \'{"ref": "r"}\' > /dev/termination-log'
    message = _run(tmp_path, ["/bin/sh", "-c", script], {"name": "c"}, reach=False)
    assert message.read_text() == '{"ref": "r"}'
    host = Path("/dev/termination-log")  # a privileged container's mount point, if any
    assert not host.exists() or host.read_bytes() == b""  # the message never reaches the host
    custom = {"name": "c", "terminationMessagePath": "/var/run/nest-test-result"}
    script = "echo -n done > /var/run/nest-test-result"
    try:
        message = _run(tmp_path, ["/bin/sh", "-c", script], custom, reach=False)
        assert message.read_text() == "done"
    finally:  # the mount point a container's path needs is made on the host's root, as volumes'
        Path("/var/run/nest-test-result").unlink(missing_ok=True)


def test_group_0_reaches_the_installation_and_nothing_else_of_its_directory(
    tmp_path: Path,
) -> None:
    paths = security.image_paths(VENV_PY, None)
    barred = security.reach(paths, JOB_USER.uid, {JOB_USER.gid})
    if not barred:
        pytest.skip("this installation is not below a directory that group 0 may not search")
    top = barred[0]
    others = sorted(set(os.listdir(top.path)) - set(top.children))
    probes = [os.path.join(top.path, n) for n in [*top.children, *others]]
    program = (
        "import json, os, sys\n"
        f"seen = [p for p in {probes!r} if os.path.exists(p)]\n"
        "print(json.dumps([list(sys.version_info[:2]), os.getuid(), os.getgid(), seen]))\n"
        "open('/dev/termination-log', 'w').write('ok')\n"
    )
    message = _run(tmp_path, [VENV_PY, "-c", program], {"name": "c"}, reach=True)
    assert message.read_text() == "ok"
    version, uid, gid, seen = json.loads((tmp_path / "c.log").read_text())
    assert (version, uid, gid) == ([3, sys.version_info[1]], 65532, 0)
    assert seen == [os.path.join(top.path, n) for n in top.children]  # and none of the others


def test_without_reach_group_0_cannot_run_it(tmp_path: Path) -> None:
    """What `reach` is for: the same launch without it cannot exec the interpreter."""
    if not security.reach(security.image_paths(VENV_PY, None), JOB_USER.uid, {JOB_USER.gid}):
        pytest.skip("this installation is not below a directory that group 0 may not search")
    with pytest.raises(process.StartError, match="permission denied"):
        _run(tmp_path, [VENV_PY, "-c", "pass"], {"name": "c"}, reach=False)

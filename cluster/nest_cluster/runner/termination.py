"""Termination messages, the kubelet's way: a file per container instance, read when it exits.

A container reports how it ended through the file at `terminationMessagePath` (default
`/dev/termination-log`); a Job's pod is the usual reader's only channel back (Tekton's step
results, our build Jobs' built ref), since the program has no API rights. The kubelet does it so
(pkg/kubelet/kuberuntime/kuberuntime_container.go, `makeMounts`, `getTerminationMessage`,
`readLastStringFromContainerLogs`, `convertToKubeContainerStatus`):

- every instance gets a fresh empty file `pods/<uid>/containers/<name>/<random id>`, mode 0666
  whatever the user, bind-mounted read-write at the path (also on a read-only root);
- once it exited, the LAST 4096 bytes of that file (`tail.ReadAtMost`) are the message;
- with `FallbackToLogsOnError`, a non-zero exit and an empty or missing file, the message is the
  tail of its log instead: the last 80 lines, of which the last 2048 bytes; never for a container
  that could not even be started (it has no output of its own);
- the status manager then cuts each message to its share of 12 KiB per pod (`normalizeStatus`).

The runner reads the file once, when it sees the exit, keeps the message in the container's
record (so it shows in `state.terminated` and later in `lastState`) and removes the file: the
kubelet keeps it as long as the dead container, which the status already outlives here.

The mount point is made where the container's view of the path lies, as for volumes: in its own
/dev (a tmpfs) for the default path, but a privileged container keeps the host's /dev, so there
an empty /dev/termination-log stays behind on the host (each container binds its own file over
it, in its own mount namespace; the host's file is never written).

Without isolation (a runner that is not root) there is no mount namespace to put a file of the
container's own at the path, and the host's path (/dev/...) is neither ours to create nor one
file per container. Such a container gets no file at all, as a kubelet whose mount list has no
entry for the path: File yields no message, FallbackToLogsOnError the log tail on failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nest_cluster.runner.volumes import Mount

Obj = Mapping[str, Any]

DEFAULT_PATH = "/dev/termination-log"
FILE = "File"
FALLBACK_TO_LOGS = "FallbackToLogsOnError"
#: kubecontainer.MaxContainerTerminationMessageLength: what is read of the file (its end).
MAX_MESSAGE = 4 * 1024
#: ... MaxContainerTerminationMessageLogLength and ...LogLines: what is read of the log.
MAX_LOG_BYTES = 2 * 1024
MAX_LOG_LINES = 80
#: ... MaxPodTerminationMessageLogLength: all containers' messages of one pod, split evenly.
MAX_POD_MESSAGES = 12 * 1024
FILE_MODE = 0o666


def message_path(container: Obj) -> str:
    """Where the container writes its message; the API server defaults it, direct use may not."""
    path = container.get("terminationMessagePath")
    return DEFAULT_PATH if path is None else str(path)


def fallback_to_logs(container: Obj, exit_code: int, started: bool) -> bool:
    """The kubelet's condition for reading the log when the file says nothing."""
    policy = container.get("terminationMessagePolicy") or FILE
    return policy == FALLBACK_TO_LOGS and exit_code != 0 and started


def create_file(directory: Path) -> Path:
    """A fresh, empty message file for one instance, writable by any user (as the kubelet's)."""
    directory.mkdir(parents=True, exist_ok=True)
    while True:
        path = directory / secrets.token_hex(4)  # the kubelet's makeUID: 8 hex digits
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        os.chmod(path, FILE_MODE)  # not narrowed by the runner's umask
        return path


def with_message_mount(mounts: list[Mount], container: Obj, file: Path) -> list[Mount]:
    """The container's mounts plus its message file, ordered parents first (as containerd sorts
    them) so that a volume mounted at a parent of the path does not cover the file."""
    target = message_path(container)
    if not target:
        return list(mounts)
    out = [*mounts, Mount(str(file), target, False)]
    return sorted(out, key=lambda m: len(Path(m.target).parts))


def read_tail(path: Path, limit: int = MAX_MESSAGE) -> bytes | None:
    """The last `limit` bytes of a file (tail.ReadAtMost); None if there is no such file."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit))
            return f.read(limit)
    except FileNotFoundError:
        return None


def log_tail(data: bytes, lines: int = MAX_LOG_LINES, limit: int = MAX_LOG_BYTES) -> bytes:
    """What the kubelet puts in a circular buffer of `limit` bytes from the last `lines` lines."""
    kept = data.splitlines(keepends=True)[-lines:] if lines > 0 else []
    return b"".join(kept)[-limit:]


def read_log(path: Path | None) -> bytes:
    """The end of an instance's log: enough bytes for MAX_LOG_LINES short lines and then some."""
    if path is None:
        return b""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            # 80 lines of which only 2 KiB are kept: 64 KiB of tail hold them unless lines are
            # absurdly long, and then the last 2 KiB are all that survives anyway.
            f.seek(max(0, size - 64 * 1024))
            return log_tail(f.read())
    except OSError as err:
        return f"Error on reading termination message from logs: {err}".encode()


def decide(data: bytes | None, fallback: bool, log: bytes | None) -> bytes:
    """getTerminationMessage + the fallback: the file's content, else the log tail if due."""
    if data:
        return data
    return (log or b"") if fallback else b""


def collect(
    container: Obj, exit_code: int, file: Path | None, log: Path | None, started: bool = True
) -> str:
    """The message of an instance that exited; its file is removed once read."""
    fallback = fallback_to_logs(container, exit_code, started)
    data: bytes | None = None
    if file is not None:
        try:
            data = read_tail(file)
        except OSError as err:
            # The kubelet reports an unreadable file instead of a message, and no fallback.
            return f"Error on reading termination log {file}: {err}"
        finally:
            with contextlib.suppress(OSError):
                file.unlink()
    message = decide(data, fallback, read_log(log) if fallback and not data else None)
    return message.decode(errors="replace")


def pod_share(containers: int) -> int:
    """Bytes of message each container of a pod keeps (normalizeStatus's bytesPerStatus)."""
    return MAX_POD_MESSAGES // containers if containers > 0 else MAX_POD_MESSAGES


def cut(message: str, limit: int) -> str:
    """The first `limit` bytes of a message, as the status manager slices it."""
    raw = message.encode()
    if len(raw) <= limit:
        return message
    return raw[:limit].decode(errors="ignore")

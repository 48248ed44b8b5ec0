"""Who was running when the runtime died: a crash record cheap enough for every invocation.

Why: namespace sandboxes share the runtime's process, so `os._exit` or a segfault in one ends
them all. Nothing can prevent that (docs/isolation.md), but the runtime can say who did it, so
the culprit is failed for good (reason RuntimeCrash) instead of crash-looping the pod, and its
neighbours restart with a message naming it.

How: `Record` is a small file in the runtime's state directory, mapped into memory. Each
namespace sandbox has a fixed slot holding its id and how much of its code runs right now — on
the event loop (invocations, hooks) and on threads (sync handlers, imports; see
isolation.threads). Updating a count is one store into the mapping (no system call); the pages
belong to the kernel's page cache, so they outlive the process however it dies. A clean exit
marks the header clean. The next runtime of the same state directory opens the file, and if the
header is not clean, the slots with code running are the *suspects* of the crash. A fatal signal
(SIGSEGV, SIGABRT, ...) is also named: `faulthandler` writes its report to a file beside it.

The rule (`judge`, pure): a crash with exactly one suspect names it the culprit. With several,
nobody is blamed yet; their imports run one at a time after the restart (probation), and a
later crash within `WINDOW_S` narrows the suspects to those running at both (and so on back):
the one left is the culprit. Culprits are remembered (`quarantine`) and refused at create, so
even a sidecar that missed the report cannot load one again. What this cannot see: code a
sandbox runs outside any call (a thread of its own, a timer, atexit), a crash of the runtime
itself, or the pod killed from outside while a call ran (a kill -9 then blames whoever ran).
"""

from __future__ import annotations

import contextlib
import faulthandler
import fcntl
import json
import logging
import mmap
import os
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

log = logging.getLogger("nest.crashlog")

MAGIC = b"NESTREC1"
# magic, pid, clean, started, heartbeat, slots
HEADER = struct.Struct("<8sIIddI")
HEADER_SIZE = 64
SLOT_SIZE = 256
ID_MAX = SLOT_SIZE - 16
SLOT_HEAD = struct.Struct("<IIII")  # id length (0: free), loop, threads, importing
U32 = struct.Struct("<I")
F64 = struct.Struct("<d")
SLOTS = 4096  # namespace sandboxes one runtime records; more run, unrecorded (logged)
WINDOW_S = 900.0  # crashes further apart than this are not compared
HISTORY = 8
QUARANTINE = 1024
RECORD_FILE = "inflight"
FATAL_FILE = "fatal.log"
STATE_FILE = "crashes.json"


@dataclass(frozen=True, slots=True)
class Crash:
    """One runtime death as the next runtime found it."""

    at: float  # the dead runtime's last heartbeat (it died within a second or so of it)
    detected_at: float
    pid: int
    exit_status: str
    suspects: tuple[str, ...]  # sandboxes running code when it died
    importing: tuple[str, ...]  # of those, the ones importing
    culprits: tuple[str, ...] = ()
    rule: str = ""

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        found["suspects"] = list(self.suspects)
        found["importing"] = list(self.importing)
        found["culprits"] = list(self.culprits)
        return found

    def as_report(self) -> dict[str, Any]:
        """The control API's `lastCrash` (sandbox.api.LastCrash)."""
        found = self.as_dict()
        found["sandboxes"] = found.pop("suspects")
        return found


def judge(
    suspects: Iterable[str], history: Sequence[Crash], now: float, window: float = WINDOW_S
) -> tuple[frozenset[str], str]:
    """The culprits of a crash with these suspects, given earlier crashes (oldest first)."""
    narrowed = frozenset(suspects)
    if not narrowed:
        return frozenset(), "no sandbox was running code"
    if len(narrowed) == 1:
        return narrowed, "the only sandbox running code"
    compared = 0
    for earlier in reversed(history):
        if now - earlier.detected_at > window:
            break
        both = narrowed & frozenset(earlier.suspects)
        if not both:
            break
        narrowed, compared = both, compared + 1
        if len(narrowed) == 1:
            return narrowed, f"the only one running code at this crash and the {compared} before"
    return frozenset(), (
        f"{len(frozenset(suspects))} sandboxes were running code: none is blamed yet (a repeat "
        "with one of them running names it)"
    )


def probation(history: Sequence[Crash], now: float, window: float = WINDOW_S) -> frozenset[str]:
    """Suspects of the latest crash left unjudged: their imports run one at a time."""
    if not history:
        return frozenset()
    last = history[-1]
    if last.culprits or now - last.detected_at > window:
        return frozenset()
    return frozenset(last.suspects)


def fatal_signal(report: str) -> str:
    """The fatal error faulthandler wrote ("Segmentation fault"), or '' for none."""
    for line in report.splitlines():
        if line.startswith("Fatal Python error:"):
            return line.partition(":")[2].strip()
    return ""


@dataclass
class Dead:
    """What a runtime that did not exit cleanly left in its record."""

    pid: int
    heartbeat: float
    running: list[str] = field(default_factory=list)
    importing: list[str] = field(default_factory=list)


def read_record(data: bytes) -> Dead | None:
    """The dead runtime's suspects from a record's bytes; None after a clean exit (or none)."""
    if len(data) < HEADER_SIZE:
        return None
    magic, pid, clean, _started, heartbeat, slots = HEADER.unpack_from(data, 0)
    if magic != MAGIC or clean:
        return None
    dead = Dead(pid, heartbeat)
    for n in range(min(slots, (len(data) - HEADER_SIZE) // SLOT_SIZE)):
        offset = HEADER_SIZE + n * SLOT_SIZE
        length, on_loop, threads, importing = SLOT_HEAD.unpack_from(data, offset)
        if not length or not (on_loop or threads):
            continue
        key = data[offset + 16 : offset + 16 + min(length, ID_MAX)].decode(errors="replace")
        dead.running.append(key)
        if importing:
            dead.importing.append(key)
    return dead


class Record:
    """The live runtime's record: slots written in place, the verdict on the previous one."""

    def __init__(self, state_dir: str, slots: int = SLOTS) -> None:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.state_dir = state_dir
        self._slots = slots
        self._free = list(range(slots - 1, -1, -1))
        self._state_path = os.path.join(state_dir, STATE_FILE)
        self.history, self.quarantine = self._load_state()
        path = os.path.join(state_dir, RECORD_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # one runtime per state directory
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        previous = os.pread(fd, HEADER_SIZE + slots * SLOT_SIZE, 0)
        self.last_crash = self._conclude(read_record(previous))
        os.ftruncate(fd, 0)
        os.ftruncate(fd, HEADER_SIZE + slots * SLOT_SIZE)  # sparse: pages only for used slots
        self._map: mmap.mmap | bytearray = mmap.mmap(fd, HEADER_SIZE + slots * SLOT_SIZE)
        now = time.time()
        HEADER.pack_into(self._map, 0, MAGIC, os.getpid() & 0xFFFFFFFF, 0, now, now, slots)
        fatal_path = os.path.join(state_dir, FATAL_FILE)
        self._fatal: IO[bytes] | None = open(fatal_path, "wb")  # noqa: SIM115 (kept open)
        self._faulthandler_was_on = faulthandler.is_enabled()
        faulthandler.enable(self._fatal, all_threads=True)
        self.probation = probation(self.history, now)

    def _load_state(self) -> tuple[list[Crash], dict[str, str]]:
        try:
            with open(self._state_path) as f:
                raw = json.load(f)
            history = [Crash(**{**c, **_tuples(c)}) for c in raw.get("crashes", [])]
            return history[-HISTORY:], dict(raw.get("quarantine", {}))
        except (OSError, ValueError, TypeError):
            return [], {}

    def _conclude(self, dead: Dead | None) -> Crash | None:
        if dead is None:
            return None
        now = time.time()
        report = ""
        path = os.path.join(self.state_dir, FATAL_FILE)
        with contextlib.suppress(OSError), open(path, errors="replace") as f:
            report = f.read(4096)
        signal_name = fatal_signal(report)
        if report:  # faulthandler wrote it to the file, not to the dead runtime's log: log it now
            log.warning("the previous runtime's fatal error report:\n%s", report)
        exit_status = signal_name or (
            "no fatal signal was reported (os._exit, SIGKILL or the OOM killer)"
        )
        culprits, rule = judge(dead.running, self.history, now)
        crash = Crash(
            at=dead.heartbeat, detected_at=now, pid=dead.pid, exit_status=exit_status,
            suspects=tuple(dead.running), importing=tuple(dead.importing),
            culprits=tuple(sorted(culprits)), rule=rule,
        )  # fmt: skip
        self.history = [*self.history, crash][-HISTORY:]
        for culprit in crash.culprits:
            doing = "importing" if culprit in crash.importing else "running a call"
            self.quarantine[culprit] = (
                f"the pod's runtime died ({exit_status}) while this namespace sandbox was "
                f"{doing}: {rule}; a shared runtime cannot contain it, so it is not loaded "
                "into one again (isolation: subprocess can run it)"
            )
        while len(self.quarantine) > QUARANTINE:
            self.quarantine.pop(next(iter(self.quarantine)))
        self._save_state()
        log.warning(
            "the previous runtime (pid %s) died: %s; running code: %s; culprits: %s (%s)",
            crash.pid, exit_status, ", ".join(crash.suspects) or "none",
            ", ".join(crash.culprits) or "none", rule,
        )  # fmt: skip
        return crash

    def _save_state(self) -> None:
        state = {"crashes": [c.as_dict() for c in self.history], "quarantine": self.quarantine}
        temporary = self._state_path + ".tmp"
        with open(temporary, "w") as f:
            json.dump(state, f)
        os.replace(temporary, self._state_path)

    # ---- the hot path: stores into the mapping ----------------------------------------------

    def claim(self, key: str) -> int:
        """A slot for a sandbox id, or -1 when every slot is taken (that one goes unrecorded)."""
        if not self._free:
            log.warning("crash record full (%d slots): %s is not recorded", self._slots, key)
            return -1
        slot = self._free.pop()
        encoded = key.encode()[:ID_MAX]
        offset = HEADER_SIZE + slot * SLOT_SIZE
        self._map[offset + 16 : offset + 16 + len(encoded)] = encoded
        SLOT_HEAD.pack_into(self._map, offset, len(encoded), 0, 0, 0)
        return slot

    def release(self, slot: int) -> None:
        if slot >= 0:
            SLOT_HEAD.pack_into(self._map, HEADER_SIZE + slot * SLOT_SIZE, 0, 0, 0, 0)
            self._free.append(slot)

    def set_loop(self, slot: int, count: int) -> None:
        if slot >= 0:
            U32.pack_into(self._map, HEADER_SIZE + slot * SLOT_SIZE + 4, count)

    def set_threads(self, slot: int, running: int, importing: int) -> None:
        if slot >= 0:
            offset = HEADER_SIZE + slot * SLOT_SIZE + 8
            U32.pack_into(self._map, offset, running)
            U32.pack_into(self._map, offset + 4, importing)

    def beat(self) -> None:
        F64.pack_into(self._map, 8 + 4 + 4 + 8, time.time())

    def close(self) -> None:
        """A clean exit: the next runtime finds nothing to blame."""
        if self._fd < 0:
            return
        U32.pack_into(self._map, 12, 1)
        mapped = self._map
        # A thread that outlived its call may still report its end: into a scratch copy now.
        self._map = bytearray(len(mapped))
        if isinstance(mapped, mmap.mmap):
            mapped.flush()
            mapped.close()
        os.close(self._fd)
        self._fd = -1
        if self._fatal is not None:
            faulthandler.disable()
            if self._faulthandler_was_on and sys.__stderr__ is not None:
                faulthandler.enable(sys.__stderr__)  # as it was (tests run under pytest's)
            self._fatal.close()
            self._fatal = None


def _tuples(raw: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    return {k: tuple(raw.get(k, ())) for k in ("suspects", "importing", "culprits")}


class NoRecord:
    """Stands in for the crash record when the runtime keeps none (tests, benchmarks)."""

    def __init__(self) -> None:
        self.probation: frozenset[str] = frozenset()
        self.quarantine: dict[str, str] = {}
        self.last_crash: Crash | None = None

    def claim(self, key: str) -> int:
        return -1

    def release(self, slot: int) -> None:
        pass

    def set_loop(self, slot: int, count: int) -> None:
        pass

    def set_threads(self, slot: int, running: int, importing: int) -> None:
        pass

    def beat(self) -> None:
        pass

    def close(self) -> None:
        pass

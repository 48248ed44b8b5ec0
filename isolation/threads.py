"""The threads namespace sandboxes run their sync code on: a quota per sandbox, leaks counted.

Why: sync handlers and imports of namespace sandboxes run on threads so the event loop stays
free, but a thread cannot be killed. With one shared pool, a function whose calls hang kept a
thread per timed-out call and, after 64 of them, every other function of the pod waited for a
thread that never came (504 for all). So every sandbox has an `Account`: it may occupy at most
`quota` threads — the calls it runs *and* the calls that overran their timeout and still run
("overdue", leaked) — and a call beyond that is refused at once (`ThreadsExhausted`, a 503 the
gateway may retry elsewhere) instead of queueing behind the hung ones. Accounts are kept per
sandbox id, and the sidecar re-creates a restarted sandbox under the same id, so the threads a
hung instance leaked keep counting against its restarts until they return: one function can
never hold more than its quota, however often it is restarted. The pool's threads are daemon
threads, so a hung call never holds up the runtime's exit.

Bound on leaks: a sandbox holds at most `quota` threads (concurrency, capped at `limit // 8`),
so with `limit` threads the others run as long as fewer than `limit // quota` sandboxes hang at
once; each of those shows as Unhealthy (isolation.namespace), not as a slow neighbour.

Every count change is also written to the sandbox's crash-record slot (isolation.crashlog), under
the pool's lock: a thread still running a sandbox's code when the process dies names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

from isolation.errors import ThreadsExhausted


class SlotWriter(Protocol):
    """Where thread counts are mirrored for the crash record (isolation.crashlog.Record)."""

    def set_threads(self, slot: int, running: int, importing: int) -> None: ...


class _NoRecord:
    def set_threads(self, slot: int, running: int, importing: int) -> None:
        pass


class Account:
    """One sandbox id's share of the pool; counts change under the pool's lock only."""

    __slots__ = ("busy", "importing", "key", "loop", "overdue", "quota", "running", "slot")

    def __init__(self, key: str, quota: int, slot: int = -1) -> None:
        self.key = key
        self.quota = max(1, quota)
        self.busy = 0  # jobs submitted and not finished (queued or running)
        self.running = 0  # jobs running on a thread now
        self.importing = 0  # of those, imports
        self.overdue = 0  # running jobs whose caller gave up (timeout): leaked threads
        self.slot = slot  # crash-record slot, -1 for none
        self.loop = 0  # code of this sandbox running on the event loop (written by the loop)


class Job:
    """One piece of a sandbox's code on its way to a thread."""

    __slots__ = (
        "account", "context", "fn", "future", "importing", "late", "loop", "overdue", "state",
    )  # fmt: skip

    def __init__(
        self,
        account: Account,
        fn: Callable[[], Any],
        future: asyncio.Future[Any],
        importing: bool,
    ) -> None:
        self.account = account
        self.fn = fn
        # The submitter's context variables go with it (as asyncio.to_thread does): which
        # sandbox's environment `os.environ` shows (isolation.environ).
        self.context = contextvars.copy_context()
        self.future = future
        self.loop = future.get_loop()
        self.importing = importing
        self.state = "queued"  # -> "running" -> "finished", or "queued" -> "dropped"
        self.overdue = False
        self.late: Callable[[], None] | None = None  # run on the loop when an overdue job ends


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return  # the caller gave up (cancelled at its timeout)
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class QuotaPool:
    """Up to `limit` daemon threads, started on demand, shared by accounts under quotas."""

    def __init__(self, limit: int = 128, record: SlotWriter | None = None) -> None:
        self.limit = max(1, limit)
        self.quota_cap = max(1, self.limit // 8)
        self._record: SlotWriter = record or _NoRecord()
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._names = itertools.count(1)
        self._threads = 0
        self.busy = 0
        self.overdue = 0
        self.ended_late: Callable[[Account], None] | None = None  # loop-side, after `late`

    def quota_for(self, concurrency: int) -> int:
        return max(1, min(concurrency, self.quota_cap))

    def submit(self, account: Account, fn: Callable[[], Any], importing: bool = False) -> Job:
        """Queue `fn` on a thread for `account`; raises ThreadsExhausted beyond its quota."""
        with self._lock:
            if account.busy >= account.quota:
                raise ThreadsExhausted(self.describe_full(account))
            account.busy += 1
            self.busy += 1
        job = Job(account, fn, asyncio.get_running_loop().create_future(), importing)
        self._jobs.put(job)
        if not self._idle.acquire(blocking=False) and self._threads < self.limit:
            self._threads += 1  # only the loop thread submits: no race on the count
            name = f"nest-ns-{next(self._names)}"
            threading.Thread(target=self._work, name=name, daemon=True).start()
        return job

    async def run(self, account: Account, fn: Callable[[], Any], importing: bool = False) -> Any:
        """`fn()` on a thread; a caller cancelled (at its timeout) leaves the job overdue."""
        job = self.submit(account, fn, importing)
        try:
            return await job.future
        except asyncio.CancelledError:
            self.abandon(job)
            raise

    def abandon(self, job: Job) -> bool:
        """The caller gave up on `job`: a queued job is dropped, a running one becomes overdue
        (its thread stays counted until it returns). True when it became overdue."""
        account = job.account
        with self._lock:
            if job.state == "queued":
                job.state = "dropped"
                account.busy -= 1
                self.busy -= 1
                return False
            if job.state == "running" and not job.overdue:
                job.overdue = True
                account.overdue += 1
                self.overdue += 1
                return True
            return False

    def describe_full(self, account: Account) -> str:
        held = f"{account.overdue} of them" if account.overdue else "all of them"
        return (
            f"sandbox {account.key} has all {account.quota} of its threads busy, {held} "
            "held by calls that overran their timeout (threads cannot be stopped)"
        )

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._run(job)
            self._idle.release()

    def _run(self, job: Job) -> None:
        account = job.account
        with self._lock:
            if job.state == "dropped":
                return
            job.state = "running"
            account.running += 1
            account.importing += job.importing
            self._record.set_threads(account.slot, account.running, account.importing)
        result: Any = None
        error: BaseException | None = None
        try:
            result = job.context.run(job.fn)
        except StopIteration as exc:  # a future cannot carry StopIteration
            error = RuntimeError(f"StopIteration raised: {exc!r}")
        except BaseException as exc:  # everything reaches the awaiting caller
            error = exc
        with self._lock:
            job.state = "finished"
            account.running -= 1
            account.importing -= job.importing
            account.busy -= 1
            self.busy -= 1
            if job.overdue:
                account.overdue -= 1
                self.overdue -= 1
            with contextlib.suppress(ValueError):  # the record closed while this one ran on
                self._record.set_threads(account.slot, account.running, account.importing)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            job.loop.call_soon_threadsafe(_resolve, job.future, result, error)
            if job.overdue:
                job.loop.call_soon_threadsafe(self._ended_late, job)

    def _ended_late(self, job: Job) -> None:
        if job.late is not None:
            job.late()
        if self.ended_late is not None:
            self.ended_late(job.account)

    def stats(self) -> dict[str, int]:
        return {
            "limit": self.limit,
            "started": self._threads,
            "busy": self.busy,
            "overdue": self.overdue,
            "quota_cap": self.quota_cap,
        }

    def close(self) -> None:
        """Let idle threads end; running ones are daemons and end with the process."""
        for _ in range(self._threads):
            self._jobs.put(None)

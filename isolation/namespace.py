"""The namespace backend: sandboxes as import namespaces inside the runtime's own interpreter.

Why: it is the density end of the trade-off. A sandbox costs one synthetic package and the
function's own modules — no process, no interpreter — so a pod can host thousands and hot-plug
one in well under a millisecond. The price is a weak trust boundary (shared process, env, cwd,
threads and third-party module state; see docs/isolation.md): namespace mode is for trusted code.

What it contains anyway (docs/isolation.md, "What namespace mode contains"):
- Imports and sync handlers run on threads (isolation.threads), never on the event loop, each
  under the function's timeout: a 40 s import fails the sandbox with `ImportTimeout` and the
  runtime keeps answering. A thread cannot be killed, so an overrun call keeps its thread: each
  sandbox may hold at most its quota of threads (concurrency, capped), leaked ones included,
  and a sandbox whose calls still run past their timeout is reported Failed/`Unhealthy` (its
  sidecar restarts it; the restart waits until its leaked threads have returned).
- Each sandbox sees its own `spec.env` in `os.environ` while its code runs (isolation.environ),
  its writes there its own, over the runtime's environment: configuration, not a secret store.
- Which sandbox runs code is kept in a crash record (isolation.crashlog) with a store per call,
  so when one of them ends the process (os._exit, a segfault) the next runtime names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from contextvars import Token
from typing import Any

from isolation import environ, loader, natives
from isolation.base import (
    TERMINAL,
    Admission,
    Reason,
    SandboxSpec,
    SandboxState,
    SandboxStatus,
    StatusCell,
    StatusListener,
    Usage,
)
from isolation.contract import FunctionInfo, Request, Response, new_request_id
from isolation.crashlog import Crash, NoRecord, Record
from isolation.errors import (
    InvokeTimeout,
    LoadError,
    NotRunning,
    SandboxExists,
    SandboxNotFound,
    ThreadsExhausted,
)
from isolation.host import (
    FunctionHost,
    Suspended,
    classify_load_error,
    load_layers,
    parse_handler,
    start_eagerly,
)
from isolation.streams import BodyStream, Bracketed, Streamed, without_length
from isolation.threads import Account, QuotaPool

log = logging.getLogger("nest.namespace")
UNHEALTHY = Reason.UNHEALTHY.value
IMPORT_TIMEOUT = Reason.IMPORT_TIMEOUT.value
RUNTIME_CRASH = Reason.RUNTIME_CRASH.value
HUNG_GRACE_S = (1.0, 30.0)  # an overrun call still running this long past its timeout: hung


def _ignore(status: SandboxStatus) -> None:
    pass


def function_info(spec: SandboxSpec) -> FunctionInfo:
    return FunctionInfo(
        sandbox_id=spec.id,
        function_name=spec.function_name or spec.id,
        function_version=spec.function_version,
        memory_limit_in_mb=spec.limits.memory_mb or 128,
        timeout_s=spec.limits.timeout_s,
    )


class _Sandbox:
    def __init__(self, spec: SandboxSpec, cell: StatusCell) -> None:
        self.spec = spec
        self.cell = cell
        self.admission = Admission(spec.limits.concurrency, spec.limits.queue)
        self.idle = asyncio.Event()
        self.idle.set()
        self.done = asyncio.Event()
        self.host: FunctionHost | None = None
        self.ns: loader.Namespace | None = None
        self.account: Account | None = None
        self.hung_check: asyncio.TimerHandle | None = None
        self.streams: set[BodyStream] = set()  # streamed answers still being read
        self.environ = environ.Overlay(spec.env)
        self.invocations = 0
        self.errors = 0
        self.timeouts = 0


class NamespaceBackend:
    name = "namespace"

    def __init__(
        self, on_change: StatusListener = _ignore, threads: int = 128, state_dir: str | None = None
    ) -> None:
        """`state_dir`: where the crash record lives (one runtime per directory); None: none."""
        self._on_change = on_change
        self._sandboxes: dict[str, _Sandbox] = {}
        self._accounts: dict[str, Account] = {}
        self._record: Record | NoRecord = NoRecord()
        if state_dir is not None:
            try:
                self._record = Record(state_dir)
            except OSError as exc:  # another runtime holds it, or it is not writable
                log.error("no crash record in %s: %s", state_dir, exc)
        self._pool = QuotaPool(threads, record=self._record)
        self._pool.ended_late = self._ended_late
        self._probation = asyncio.Lock()  # suspects of an unjudged crash import one at a time
        self._beat: asyncio.TimerHandle | None = None
        self._finder = loader.install()
        environ.install()
        # The runtime's sys.path, as namespace sandboxes may not change it (_contain_sys_path).
        self._sys_path_list = sys.path
        self._sys_path = list(sys.path)

    @property
    def last_crash(self) -> Crash | None:
        """How the previous runtime of this state directory died, if it did not exit cleanly."""
        return self._record.last_crash

    def threads(self) -> dict[str, int]:
        return self._pool.stats()

    def _get(self, sandbox_id: str) -> _Sandbox:
        try:
            return self._sandboxes[sandbox_id]
        except KeyError:
            raise SandboxNotFound(sandbox_id) from None

    # ---- accounts: a sandbox id's threads and crash-record slot, across its restarts ---------

    def _account(self, spec: SandboxSpec) -> Account:
        quota = self._pool.quota_for(spec.limits.concurrency)
        account = self._accounts.get(spec.id)
        if account is None:
            account = Account(spec.id, quota, self._record.claim(spec.id))
            self._accounts[spec.id] = account
        else:
            account.quota = quota
        return account

    def _drop_account(self, key: str) -> None:
        """Forget an id's account once it has no sandbox and no thread left."""
        account = self._accounts.get(key)
        if account is None or key in self._sandboxes or account.busy or account.loop:
            return
        del self._accounts[key]
        self._record.release(account.slot)

    def _ended_late(self, account: Account) -> None:
        self._drop_account(account.key)

    def _refusal(self, spec: SandboxSpec) -> LoadError | None:
        """Why this id may not load now: a crash named it, or its leaked threads fill its quota."""
        crashed = self._record.quarantine.get(spec.id)
        if crashed is not None:
            return LoadError(RUNTIME_CRASH, crashed)
        account = self._accounts.get(spec.id)
        quota = self._pool.quota_for(spec.limits.concurrency)
        if account is None or account.busy < quota:
            return None
        what = "its import" if account.importing else f"{account.busy} call(s)"
        return LoadError(
            IMPORT_TIMEOUT if account.importing else UNHEALTHY,
            f"{what} from an earlier start still run(s) past the timeout and hold(s) all "
            f"{quota} of its threads (threads cannot be stopped); it can start once they return",
        )

    def _enter(self, account: Account) -> None:
        account.loop += 1
        self._record.set_loop(account.slot, account.loop)

    def _leave(self, account: Account) -> None:
        account.loop -= 1
        self._record.set_loop(account.slot, account.loop)

    def _ensure_beat(self) -> None:
        if self._beat is None and not isinstance(self._record, NoRecord):
            self._beat = asyncio.get_running_loop().call_later(1.0, self._tick)

    def _tick(self) -> None:
        self._record.beat()  # when it died, to within a second
        self._beat = asyncio.get_running_loop().call_later(1.0, self._tick)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxStatus:
        if spec.id in self._sandboxes:
            raise SandboxExists(spec.id)
        sb = _Sandbox(spec, StatusCell(spec, self.name, self._on_change))
        self._sandboxes[spec.id] = sb
        token = environ.enter(sb.environ)  # its import and its start see its env
        try:
            refused = self._refusal(spec)
            if refused is not None:
                raise refused
            module_name, attr = parse_handler(spec.handler)
            account = sb.account = self._account(spec)
            self._ensure_beat()
            sb.ns = self._load_namespace(spec)
            try:
                module = await self._import(sb, account, sb.ns, module_name)
            finally:
                self._contain_sys_path(sb)
            run_sync = functools.partial(self._pool.run, account)
            host = FunctionHost(
                function_info(spec), module, attr, load_layers(spec.layers), run_sync,
                interface=spec.interface,
            )  # fmt: skip
            if not host.handler_is_async and account.quota < spec.limits.concurrency:
                # Sync calls need a thread each: admit no more than may have one.
                sb.admission = Admission(account.quota, spec.limits.queue)
            self._enter(account)
            try:
                await host.start()
            finally:
                self._leave(account)
        except (Exception, SystemExit) as exc:  # broken function code must not end the runtime
            err = classify_load_error(exc, spec.handler)
            self._unload(sb)
            sb.cell.move(SandboxState.FAILED, reason=err.reason, message=err.message)
            sb.done.set()
            raise err from None
        finally:
            environ.leave(token)
        sb.host = host
        return sb.cell.move(SandboxState.RUNNING, pid=os.getpid())

    def _load_namespace(self, spec: SandboxSpec) -> loader.Namespace:
        """Its package over its code and layers, once its native distributions fit the ones
        this runtime holds (else LoadError DependencyConflict, naming both versions)."""
        try:
            wanted = natives.parse(spec.native_distributions)
        except ValueError as exc:
            raise LoadError(Reason.ERROR, str(exc)) from None
        try:
            self._finder.claim_natives(spec.id, wanted, spec.dependency_paths)
        except natives.DependencyConflict as exc:
            raise LoadError(Reason.DEPENDENCY_CONFLICT, str(exc)) from None
        names = frozenset(
            top
            for name in wanted
            for root in spec.dependency_paths
            for top in natives.installed_top_levels(root, name)
        )
        return self._finder.load(spec.code_dir, spec.dependency_paths, names)

    def loaded_natives(self) -> list[str]:
        """The compiled distributions this runtime holds, "name==version" (RuntimeInfo)."""
        return self._finder.natives.report()

    def native_roots(self) -> list[str]:
        """Where those natives load from (RuntimeInfo.native_roots): kept while we live."""
        return self._finder.natives.import_roots()

    def _contain_sys_path(self, sb: _Sandbox) -> None:
        """Undo a change to the shared sys.path made while a sandbox's code ran (sandbox code
        edits its own view, see loader._SysView; this catches what reached the real one, e.g.
        through `site.addsitedir`): the added entries become the sandbox's own."""
        if sys.path == self._sys_path:  # identical strings: a cheap compare, once per call
            return
        added = [p for p in sys.path if p not in self._sys_path]
        if sys.path is not self._sys_path_list:
            sys.path = self._sys_path_list
        self._sys_path_list[:] = self._sys_path
        if sb.ns is not None and added:
            sb.ns.adopt_path_entries(added)
        log.warning(
            "namespace sandbox %s changed the shared sys.path (%s): restored; the entries it "
            "added are its own",
            sb.spec.id,
            ", ".join(added) or "entries removed",
        )

    async def _import(
        self, sb: _Sandbox, account: Account, ns: loader.Namespace, module_name: str
    ) -> Any:
        """Import the handler's module on a thread, under the function's timeout."""
        timeout = sb.spec.limits.timeout_s
        gate = self._probation if sb.spec.id in self._record.probation else None
        async with gate or contextlib.nullcontext():
            job = self._pool.submit(account, functools.partial(ns.import_module, module_name),
                                    importing=True)  # fmt: skip
            # If it overruns, whatever it imports after we gave up is dropped when it ends.
            job.late = functools.partial(self._finder.unload, ns)
            try:
                async with asyncio.timeout(timeout):
                    return await job.future
            except TimeoutError:
                self._pool.abandon(job)
                raise LoadError(
                    IMPORT_TIMEOUT,
                    f"importing {module_name!r} did not finish within the function's "
                    f"{timeout:g}s timeout; its thread cannot be stopped and keeps 1 of the "
                    f"sandbox's {account.quota} thread(s) until the import returns",
                ) from None

    async def invoke(self, sandbox_id: str, request: Request) -> Response:
        sb = self._get(sandbox_id)
        if sb.cell.current.state is not SandboxState.RUNNING:
            raise NotRunning(self._not_running(sb))
        async with sb.admission.slot() as slot:
            host = sb.host
            account = sb.account
            if host is None or account is None or sb.cell.current.state is not SandboxState.RUNNING:
                raise NotRunning(self._not_running(sb))
            if account.busy >= account.quota and not host.handler_is_async:
                raise ThreadsExhausted(self._pool.describe_full(account))
            sb.idle.clear()
            sb.invocations += 1
            timeout = sb.spec.limits.timeout_s
            deadline = time.monotonic() + timeout  # the loop's clock: asyncio.timeout_at below
            self._enter(account)
            token = environ.enter(sb.environ)
            kept = False  # a streamed answer's slot, kept past this block until it ends
            try:
                started = start_eagerly(host.invoke(request, new_request_id(), deadline))
                if isinstance(started, Suspended):
                    async with asyncio.timeout_at(deadline):
                        response = await started.rest
                else:
                    response = started
                if type(response.body) is Streamed:  # it holds its slot until it ends
                    response = self._stream(sb, host, account, response, slot.keep(), deadline)
                    kept = True
            except TimeoutError:
                sb.timeouts += 1
                if account.overdue:
                    self._overran(sb, account)
                raise InvokeTimeout(f"{sandbox_id} did not answer within {timeout:g}s") from None
            finally:
                environ.leave(token)
                self._leave(account)
                self._contain_sys_path(sb)
                if sb.admission.in_flight == 1 and not kept:
                    sb.idle.set()
                if self._sandboxes.get(sandbox_id) is not sb:
                    self._drop_account(sandbox_id)  # removed meanwhile: the last call out
            if response.status >= 500:
                sb.errors += 1
            return response

    def _stream(
        self, sb: _Sandbox, host: FunctionHost, account: Account, response: Response,
        release: Callable[[], None], deadline: float,
    ) -> Response:  # fmt: skip
        """A streamed answer as the runtime reads it: bounded by the timeout (each gap) and
        the maximum duration, its steps on the loop recorded as this sandbox's code running
        (sync steps run on its threads), closed at stop, its slot released when it ends."""
        limits = sb.spec.limits
        tokens: list[Token[environ.Overlay | None]] = []  # each step's, its env (isolation.environ)

        def enter() -> None:
            self._enter(account)
            tokens.append(environ.enter(sb.environ))

        def leave() -> None:
            environ.leave(tokens.pop())
            self._leave(account)

        recorded = Bracketed(host.chunks(response.body), enter, leave)

        def done() -> None:
            sb.streams.discard(stream)
            release()
            if sb.admission.in_flight == 0:
                sb.idle.set()
            if self._sandboxes.get(sb.spec.id) is not sb:
                self._drop_account(sb.spec.id)

        stream = BodyStream(recorded, limits.timeout_s, limits.max_duration_s, done,
                            started=deadline - limits.timeout_s)  # fmt: skip
        sb.streams.add(stream)
        return Response(response.status, without_length(response.headers), stream)

    def _not_running(self, sb: _Sandbox) -> str:
        status = sb.cell.current
        why = f" ({status.reason}: {status.message})" if status.reason == UNHEALTHY else ""
        return f"{sb.spec.id} is {status.state}{why}"

    def _overran(self, sb: _Sandbox, account: Account) -> None:
        """A call timed out and its thread runs on: Unhealthy now if no thread is left to the
        sandbox, else if one is still running a grace period later."""
        if sb.cell.current.state is not SandboxState.RUNNING:
            return
        if account.overdue >= account.quota:
            self._unhealthy(sb, account)
        elif sb.hung_check is None:
            low, high = HUNG_GRACE_S
            grace = min(max(sb.spec.limits.timeout_s, low), high)
            sb.hung_check = asyncio.get_running_loop().call_later(
                grace, self._check_hung, sb, account
            )

    def _check_hung(self, sb: _Sandbox, account: Account) -> None:
        sb.hung_check = None
        if account.overdue and self._sandboxes.get(sb.spec.id) is sb:
            self._unhealthy(sb, account)

    def _unhealthy(self, sb: _Sandbox, account: Account) -> None:
        if sb.cell.current.state is not SandboxState.RUNNING:
            return
        timeout = sb.spec.limits.timeout_s
        sb.cell.move(
            SandboxState.FAILED,
            reason=UNHEALTHY,
            message=f"{account.overdue} call(s) still running past the {timeout:g}s timeout "
            f"hold {account.overdue} of its {account.quota} thread(s) (threads cannot be "
            "stopped); restart it",
        )
        log.warning("namespace sandbox %s is unhealthy: calls hang past their timeout", sb.spec.id)

    async def stop(self, sandbox_id: str, grace_s: float = 5.0) -> SandboxStatus:
        sb = self._get(sandbox_id)
        state = sb.cell.current.state
        if state in TERMINAL:
            return sb.cell.current
        if state is SandboxState.STOPPING:
            await sb.done.wait()
            return sb.cell.current
        sb.cell.move(SandboxState.STOPPING)
        deadline = time.monotonic() + grace_s
        try:
            async with asyncio.timeout(grace_s):
                await sb.idle.wait()
        except TimeoutError:
            pass  # in-flight invocations overran the grace period; unload anyway
        for stream in list(sb.streams):  # streamed answers past the grace end here
            await stream.aclose()
        if sb.host is not None and sb.account is not None:
            self._enter(sb.account)
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    with environ.active(sb.environ):  # its close hooks see its env
                        await sb.host.close()
            except TimeoutError:
                pass
            finally:
                self._leave(sb.account)
        self._unload(sb)
        sb.done.set()
        return sb.cell.move(SandboxState.STOPPED, reason="Completed")

    def _unload(self, sb: _Sandbox) -> None:
        sb.host = None
        if sb.hung_check is not None:
            sb.hung_check.cancel()
            sb.hung_check = None
        if sb.ns is not None:
            self._finder.unload(sb.ns)
            sb.ns = None
        self._finder.release_natives(sb.spec.id)

    async def remove(self, sandbox_id: str) -> None:
        if sandbox_id not in self._sandboxes:
            return  # idempotent, like stop
        await self.stop(sandbox_id, grace_s=0.0)
        sb = self._sandboxes.pop(sandbox_id, None)
        if sb is not None:
            self._unload(sb)  # an Unhealthy sandbox failed with its modules still loaded
            sb.done.set()
        self._drop_account(sandbox_id)

    def status(self, sandbox_id: str) -> SandboxStatus:
        return self._get(sandbox_id).cell.current

    def usage(self, sandbox_id: str) -> Usage:
        sb = self._get(sandbox_id)
        return Usage(
            in_flight=sb.admission.in_flight,
            queued=sb.admission.queued,
            invocations=sb.invocations,
            errors=sb.errors,
            timeouts=sb.timeouts,
            rejected=sb.admission.rejected,
        )

    def list(self) -> list[SandboxStatus]:
        return [sb.cell.current for sb in self._sandboxes.values()]

    async def close(self) -> None:
        for sandbox_id in list(self._sandboxes):
            await self.remove(sandbox_id)
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        self._pool.close()
        self._record.close()  # a clean exit: nothing to blame next time

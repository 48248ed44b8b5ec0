"""The subprocess backend: one forked process per sandbox, supervised by the runtime.

Why: it is the strong end of the trade-off — the function gets its own address space, env and
working directory, and can be killed. With a `BoundaryConfig` each sandbox is also its own
principal (`isolation.principals`: uid, scratch, cgroup; `isolation.confine`: what the child
applies), and its memory limit is the kernel's (a cgroup OOM kill -> OOMKilled; without a
cgroup, rlimits plus a polled sum over its processes). An invocation overrunning its timeout
kills the process (Timeout), and any other death is reported with its exit code or signal
(Crashed). Whatever the process leaves behind dies with it.

Every such end is Failed with its reason, and nothing restarts here: restarting with back-off is
the sidecar's one decision, as it is the kubelet's, so every restart shows in the Sandbox's
restartCount, reason and Events.
"""

from __future__ import annotations

import asyncio
import os
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Sequence
from typing import Any

import psutil

from isolation.base import (
    TERMINAL,
    Reason,
    SandboxSpec,
    SandboxState,
    SandboxStatus,
    StatusCell,
    StatusListener,
    Usage,
)
from isolation.boundary import BoundaryConfig
from isolation.child import spec_frame
from isolation.contract import Request, Response, new_request_id
from isolation.errors import (
    InvokeTimeout,
    LoadError,
    NotRunning,
    SandboxCrashed,
    SandboxExists,
    SandboxNotFound,
)
from isolation.interfaces import header_items, raw_query
from isolation.ipc import FramedStream, encode_frame
from isolation.namespace import function_info
from isolation.principals import Principals
from isolation.supervision import Channel, Proc, bounded, describe_exit, expire, oom_message
from isolation.zygote import Zygote


def _ignore(status: SandboxStatus) -> None:
    pass


class SubprocessBackend:
    name = "subprocess"

    def __init__(
        self,
        on_change: StatusListener = _ignore,
        preload: Sequence[str] = (),
        memory_poll_s: float = 0.2,
        boundary: BoundaryConfig | None = None,
    ) -> None:
        """`boundary`: confine every sandbox (own uid, seccomp, Landlock, limits); None: don't."""
        self._on_change = on_change
        self._preload = ["sandbox", *preload]
        self._boundary = boundary
        self.principals: Principals | None = None
        self._zygote = Zygote(self._preload, confined=boundary is not None)
        self._zygote_lock = asyncio.Lock()
        self._procs: dict[str, Proc] = {}
        self._memory_poll_s = memory_poll_s
        self._watcher: asyncio.Task[None] | None = None

    @property
    def zygote_pid(self) -> int | None:
        return self._zygote.pid

    async def start(self) -> None:
        if self._boundary is not None:
            self.principals = Principals(self._boundary)
        await self._zygote.start()
        self._watcher = asyncio.create_task(self._watch_memory())

    def _get(self, sandbox_id: str) -> Proc:
        try:
            return self._procs[sandbox_id]
        except KeyError:
            raise SandboxNotFound(sandbox_id) from None

    async def create(self, spec: SandboxSpec) -> SandboxStatus:
        if spec.id in self._procs:
            raise SandboxExists(spec.id)
        proc = Proc(spec, StatusCell(spec, self.name, self._on_change))
        self._procs[spec.id] = proc
        try:
            await self._spawn(proc)
        except LoadError as err:
            proc.cell.move(SandboxState.FAILED, reason=err.reason, message=err.message)
            proc.done.set()
            raise
        finally:
            proc.settled.set()
        return proc.cell.move(SandboxState.RUNNING, pid=proc.pid)

    def _child_spec(self, spec: SandboxSpec) -> dict[str, Any]:
        info = function_info(spec)
        confine = None
        if self.principals is not None:
            prepared = self.principals.prepare(spec, self._zygote.pycache, self._zygote.pid)
            confine = prepared.to_json()
        return {
            "confine": confine,
            "id": spec.id,
            "code_dir": os.path.abspath(spec.code_dir),
            "handler": spec.handler,
            "function_name": info.function_name,
            "function_version": info.function_version,
            "memory_limit_in_mb": info.memory_limit_in_mb,
            "timeout_s": info.timeout_s,
            "concurrency": spec.limits.concurrency,
            "env": dict(spec.env),
            "workdir": os.path.abspath(spec.workdir) if spec.workdir else None,
            "layers": list(spec.layers),
            "interface": spec.interface,
            "dependency_paths": [os.path.abspath(d) for d in spec.dependency_paths],
        }

    async def _spawn(self, proc: Proc) -> None:
        """Fork and load one generation of the sandbox; raises LoadError if it never got ready."""
        proc.kill_reason, proc.kill_message = None, ""
        async with self._zygote_lock:  # concurrent creates must not each start a new zygote
            if self._zygote.lost:
                await self._restart_zygote()
        zygote = proc.zygote = self._zygote
        try:
            # Compiled into the bytecode cache (confined sandboxes cannot write it) and loaded
            # by the zygote, once per code directory: its sandboxes share the code objects.
            await zygote.prepare(os.path.abspath(proc.spec.code_dir))
            if self.principals is not None:
                for path in proc.spec.dependency_paths:  # layers ship no bytecode
                    await zygote.precompile(os.path.abspath(path))
            child_spec = self._child_spec(proc.spec)
        except (RuntimeError, OSError) as exc:  # no uid left, scratch or cgroup not writable
            raise LoadError(Reason.ERROR, f"sandbox boundary: {exc}") from None
        try:
            pid, sock = await zygote.fork()
        except (RuntimeError, OSError) as exc:  # the zygote died under this very request
            raise LoadError(Reason.CRASHED, f"could not fork the sandbox: {exc}") from None
        proc.pid = pid
        exited = zygote.exit_future(pid)
        try:
            proc.ps = psutil.Process(pid)
        except psutil.Error:
            proc.ps = None  # already gone: the handshake below reports how
        loop = asyncio.get_running_loop()
        transport, channel = await loop.create_unix_connection(lambda: Channel(proc), sock=sock)
        transport.write(spec_frame(child_spec))  # the child's first read (isolation.zygote)
        timeout = proc.spec.limits.timeout_s
        try:
            async with asyncio.timeout(timeout):
                # The process may die while a descendant still holds its end of the socket: its
                # exit, not only EOF, ends the wait.
                waits: set[asyncio.Future[Any]] = {channel.handshake, exited}
                await asyncio.wait(waits, return_when=FIRST_COMPLETED)
                if not channel.handshake.done():
                    channel.handshake.set_exception(ConnectionResetError("process exited"))
                header = channel.handshake.result()
        except TimeoutError:
            proc.kill(Reason.TIMEOUT, f"loading took longer than {timeout:g}s")
            header = {"t": "failed", "reason": Reason.TIMEOUT, "message": proc.kill_message}
        except ConnectionError:
            if channel.malformed:
                proc.kill(Reason.CRASHED, "sent a malformed frame")
            _, _, how = describe_exit(await exited)
            # Killed by us while loading (the memory watcher) is that reason, not a crash.
            reason = proc.kill_reason or Reason.CRASHED
            message = f"while loading: {proc.kill_message or how}"
            header = {"t": "failed", "reason": reason, "message": message}
        if header.get("t") != "ready":
            transport.close()
            await exited
            zygote.forget(pid)
            proc.ps = None
            if self.principals is not None:
                await self.principals.end_generation(proc.spec.id)
                if self.principals.oom_killed(proc.spec.id):
                    header = {"reason": Reason.OOM_KILLED, "message": oom_message(proc.spec)}
            raise LoadError(str(header.get("reason")), str(header.get("message")))
        proc.channel = channel
        proc.supervisor = asyncio.create_task(self._supervise(proc, channel, exited))

    async def _supervise(self, proc: Proc, channel: Channel, exited: asyncio.Future[int]) -> None:
        # EOF, reset, or a malformed frame: gone or untrustworthy. Or the process exited while
        # a child it forked keeps the socket open: that is the end of this generation too.
        ends: set[asyncio.Future[Any]] = {channel.closed, exited}
        await asyncio.wait(ends, return_when=FIRST_COMPLETED)
        if channel.transport is not None:
            channel.transport.close()
        if channel.malformed and not exited.done():
            proc.kill(Reason.CRASHED, "sent a malformed frame")
        wait_status = await exited
        if proc.zygote is not None:
            proc.zygote.forget(proc.pid or 0)
        await self._on_exit(proc, wait_status)

    async def _restart_zygote(self) -> None:
        """Replace a zygote that died: its sandboxes are reported Crashed, new ones fork again."""
        await self._zygote.close()  # reaps the dead process and drops its bytecode cache
        self._zygote = Zygote(self._preload, confined=self._boundary is not None)
        await self._zygote.start()

    async def _on_exit(self, proc: Proc, wait_status: int) -> None:
        if self.principals is not None:
            await self.principals.end_generation(proc.spec.id)  # its whole tree dies with it
            if proc.kill_reason is None and self.principals.oom_killed(proc.spec.id):
                proc.kill_reason, proc.kill_message = Reason.OOM_KILLED, oom_message(proc.spec)
        code, sig, how = describe_exit(wait_status)
        if proc.zygote is not None and proc.zygote.lost:
            how += " (its zygote process exited)"
        proc.channel, proc.ps = None, None
        crashed = SandboxCrashed(f"{proc.spec.id} {how}")
        for fut in proc.pending.values():
            if not fut.done():
                fut.set_exception(crashed)
        proc.pending.clear()
        for stream in proc.streams.values():
            stream.end(f"the sandbox process {how}")
        proc.streams.clear()
        state = proc.cell.current.state
        if state is SandboxState.STOPPING:
            proc.cell.move(
                SandboxState.STOPPED, reason=Reason.COMPLETED, exit_code=code, signal=sig
            )
        elif proc.kill_reason in (Reason.TIMEOUT, Reason.OOM_KILLED):
            # Ended by us, for a reason: reported, never restarted here. Restarts are the
            # sidecar's one decision, so each shows in restartCount, reason and an Event.
            proc.cell.move(
                SandboxState.FAILED,
                reason=proc.kill_reason,
                message=proc.kill_message,
                exit_code=code,
                signal=sig,
            )
        else:
            proc.cell.move(
                SandboxState.FAILED, reason=Reason.CRASHED, message=how, exit_code=code, signal=sig
            )
        proc.done.set()

    async def invoke(self, sandbox_id: str, request: Request) -> Response:
        proc = self._get(sandbox_id)
        if proc.cell.current.state is not SandboxState.RUNNING:
            raise NotRunning(f"{sandbox_id} is {proc.cell.current.state}")
        async with proc.admission.slot() as slot:
            channel = proc.channel
            if channel is None or proc.cell.current.state is not SandboxState.RUNNING:
                raise NotRunning(f"{sandbox_id} is {proc.cell.current.state}")
            assert channel.transport is not None
            proc.invocations += 1
            rid = next(proc.ids)
            loop = asyncio.get_running_loop()
            fut = proc.pending[rid] = loop.create_future()
            timeout = proc.spec.limits.timeout_s
            deadline = time.monotonic() + timeout  # the loop's clock, so call_at below agrees
            header = {
                "t": "invoke",
                "id": rid,
                "rid": new_request_id(),
                "method": request.method,
                "path": request.path,
                "raw_path": request.raw_path,
                # Every value, in order: the child rebuilds the same multidicts (one shape).
                "query": raw_query(request),
                "headers": header_items(request),
                "root_path": request.root_path,
                "client": request.client,
                "deadline": deadline,
            }
            channel.transport.write(encode_frame(header, request.body))
            # A timer that fails the future directly: cheaper than asyncio.timeout's cancel and
            # uncancel of the whole task, and the only thing waiting on the future is us.
            expiry = loop.call_at(deadline, expire, fut)
            try:
                response: Response = await fut
            except TimeoutError:
                proc.timeouts += 1
                proc.kill(Reason.TIMEOUT, f"an invocation overran the {timeout:g}s timeout")
                raise InvokeTimeout(f"{sandbox_id} did not answer within {timeout:g}s") from None
            except SandboxCrashed:
                proc.errors += 1
                raise
            finally:
                expiry.cancel()
                proc.pending.pop(rid, None)
            if type(response.body) is FramedStream:
                response = bounded(proc, response, slot.keep(), deadline)
            if response.status >= 500:
                proc.errors += 1
            return response

    async def stop(self, sandbox_id: str, grace_s: float = 5.0) -> SandboxStatus:
        proc = self._get(sandbox_id)
        if proc.cell.current.state in TERMINAL:
            return proc.cell.current
        if proc.cell.current.state is not SandboxState.STOPPING:
            await proc.settled.wait()  # let a create or restart in flight finish first
            if proc.cell.current.state in TERMINAL:
                return proc.cell.current
            proc.cell.move(SandboxState.STOPPING)
            await self._stop_process(proc, grace_s)
        await proc.done.wait()
        return proc.cell.current

    async def _stop_process(self, proc: Proc, grace_s: float) -> None:
        """Drain, ask the process to run its close hooks and exit, kill it at the deadline."""
        deadline = time.monotonic() + grace_s
        while (proc.pending or proc.streams) and time.monotonic() < deadline:
            running: list[asyncio.Future[Any]] = [*proc.pending.values()]
            running += [stream.ended for stream in proc.streams.values()]
            await asyncio.wait(running, timeout=deadline - time.monotonic())
        if proc.channel is not None and proc.channel.transport is not None and grace_s > 0:
            proc.channel.transport.write(encode_frame({"t": "stop"}))
            assert proc.zygote is not None
            exited = proc.zygote.exit_future(proc.pid or 0)
            await asyncio.wait([exited], timeout=max(0.0, deadline - time.monotonic()))
        if not proc.done.is_set():
            proc.kill("Stopped", "grace period over")
        await proc.done.wait()

    async def remove(self, sandbox_id: str) -> None:
        if sandbox_id not in self._procs:
            return  # idempotent, like stop
        await self.stop(sandbox_id, grace_s=0.0)
        self._procs.pop(sandbox_id, None)
        if self.principals is not None:
            await self.principals.release(sandbox_id)

    def status(self, sandbox_id: str) -> SandboxStatus:
        return self._get(sandbox_id).cell.current

    def usage(self, sandbox_id: str) -> Usage:
        proc = self._get(sandbox_id)
        memory = cpu = None
        if proc.ps is not None:
            try:
                with proc.ps.oneshot():
                    memory = proc.ps.memory_full_info().uss
                    times = proc.ps.cpu_times()
                    cpu = times.user + times.system
            except psutil.Error:
                pass
        return Usage(
            in_flight=proc.admission.in_flight,
            queued=proc.admission.queued,
            invocations=proc.invocations,
            errors=proc.errors,
            timeouts=proc.timeouts,
            rejected=proc.admission.rejected,
            memory_bytes=memory,
            cpu_seconds=cpu,
        )

    def list(self) -> list[SandboxStatus]:
        return [proc.cell.current for proc in self._procs.values()]

    async def _watch_memory(self) -> None:
        principals = self.principals
        if principals is not None and principals.cgroup_root is not None:
            return  # the kernel enforces memory limits per sandbox cgroup, at every moment
        while True:
            await asyncio.sleep(self._memory_poll_s)  # a periodic poll, not synchronisation
            for proc in list(self._procs.values()):
                limit_mb = proc.spec.limits.memory_mb
                if limit_mb is None or proc.ps is None:
                    continue
                try:
                    if principals is not None:  # rlimits bound each process; this, the tree
                        uss = await asyncio.to_thread(principals.tree_memory, proc.spec.id)
                    else:
                        uss = proc.ps.memory_full_info().uss
                except psutil.Error:
                    continue
                if uss > limit_mb * 1024 * 1024:
                    used = uss / (1024 * 1024)
                    proc.kill(Reason.OOM_KILLED, f"using {used:.0f} MiB, limit {limit_mb} MiB")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        await asyncio.gather(*(self.remove(sid) for sid in list(self._procs)))
        await self._zygote.close()
        if self.principals is not None:
            self.principals.close()

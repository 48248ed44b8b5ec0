"""The runtime's record of one sandbox process and its end of the process's channel.

Why a module of its own: `isolation.process` decides the life of a sandbox process (fork,
supervise, stop, report); this is what it keeps per process and what reads the process's
frames — results, the start/chunk/end frames of a streamed answer (`isolation.ipc.
FramedStream`), a stream's cancellation, and the bounds a streamed answer is read under.
Nothing here trusts the process: a malformed frame marks the channel untrustworthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
from collections.abc import Callable
from typing import Any

import psutil

from isolation.base import Admission, Reason, SandboxSpec, StatusCell
from isolation.contract import Response
from isolation.ipc import FramedStream, FrameParser, encode_frame, headers_of
from isolation.streams import BodyStream, without_length
from isolation.zygote import Zygote


def oom_message(spec: SandboxSpec) -> str:
    return f"the memory limit of {spec.limits.memory_mb} MiB was reached (its cgroup's OOM kill)"


def describe_exit(wait_status: int) -> tuple[int | None, int | None, str]:
    """(exit code, signal, human message) from an os.waitpid status."""
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        return None, sig, f"killed by signal {signal.Signals(sig).name}"
    code = os.waitstatus_to_exitcode(wait_status)
    return code, None, f"exited with code {code}"


class Proc:
    """The mutable runtime-side record of one sandbox process (one generation at a time)."""

    def __init__(self, spec: SandboxSpec, cell: StatusCell) -> None:
        self.spec = spec
        self.cell = cell
        self.admission = Admission(spec.limits.concurrency, spec.limits.queue)
        self.pid: int | None = None
        self.ps: psutil.Process | None = None
        self.channel: Channel | None = None  # set while a generation is serving
        self.supervisor: asyncio.Task[None] | None = None
        self.pending: dict[int, asyncio.Future[Response]] = {}
        self.streams: dict[int, FramedStream] = {}  # streamed answers the process still sends
        self.ids = itertools.count(1)
        self.zygote: Zygote | None = None  # the one that forked the current generation
        self.kill_reason: str | None = None  # why *we* ended the process, if we did
        self.kill_message = ""
        self.settled = asyncio.Event()  # set when no create/restart is in progress
        self.done = asyncio.Event()  # set once terminal
        self.invocations = 0
        self.errors = 0
        self.timeouts = 0

    def kill(self, reason: str, message: str) -> None:
        if self.kill_reason is None:
            self.kill_reason, self.kill_message = reason, message
        if self.ps is not None:
            with contextlib.suppress(psutil.Error):
                self.ps.kill()  # psutil refuses if the pid was reused meanwhile


class Channel(asyncio.Protocol):
    """The runtime's end of one sandbox process's socket.

    Why a Protocol and not streams: a result frame resolves its invocation's future right in
    `data_received`, with no reader task to wake in between (one loop iteration per call less).
    """

    def __init__(self, proc: Proc) -> None:
        loop = asyncio.get_running_loop()
        self._proc = proc
        self._parser = FrameParser()
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.malformed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            for header, body in self._parser.feed(data):
                if not self.handshake.done():
                    self.handshake.set_result(header)
                    continue
                kind = header["t"]
                if kind == "result":
                    fut = self._proc.pending.pop(header["id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(Response(header["status"], headers_of(header), body))
                elif kind == "chunk":
                    stream = self._proc.streams.get(header["id"])
                    if stream is not None:
                        stream.feed(body)
                elif kind == "start":
                    self._start(header)
                elif kind == "end":
                    ended = self._proc.streams.pop(header["id"], None)
                    if ended is not None:
                        error = header.get("error")
                        ended.end(None if error is None else str(error))
        except Exception:
            self.malformed = True  # the process is untrustworthy from here on
            assert self.transport is not None
            self.transport.close()

    def _start(self, header: dict[str, Any]) -> None:
        """A streamed answer begins: its invocation gets a FramedStream as its body."""
        rid = header["id"]
        fut = self._proc.pending.pop(rid, None)
        if fut is None or fut.done():  # its caller gave up (timeout: it is being killed)
            return
        stream = FramedStream(lambda: self._cancel(rid), self._pause)
        self._proc.streams[rid] = stream
        fut.set_result(Response(header["status"], headers_of(header), stream))

    def _cancel(self, rid: int) -> None:
        """Ask the process to stop a stream; one that does not end within the function's
        timeout means the process is stuck in it (a blocking step): it is killed."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame({"t": "cancel", "id": rid}))
        timeout = self._proc.spec.limits.timeout_s
        asyncio.get_running_loop().call_later(timeout, self._overdue, rid, timeout)

    def _overdue(self, rid: int, timeout: float) -> None:
        if rid in self._proc.streams:
            self._proc.timeouts += 1
            message = f"a stream it was asked to stop did not end within the {timeout:g}s timeout"
            self._proc.kill(Reason.TIMEOUT, message)

    def _pause(self, paused: bool) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionResetError("channel closed"))
        if not self.closed.done():
            self.closed.set_result(None)


def bounded(
    proc: Proc, response: Response, release: Callable[[], None], deadline: float
) -> Response:
    """A streamed answer as the runtime reads it: bounded by the timeout (each gap) and the
    maximum duration; its slot is the process's until the process ends the stream."""
    stream: FramedStream = response.body
    stream.ended.add_done_callback(lambda _: release())
    limits = proc.spec.limits
    bounded = BodyStream(stream, limits.timeout_s, limits.max_duration_s, _nothing,
                         started=deadline - limits.timeout_s)  # fmt: skip
    return Response(response.status, without_length(response.headers), bounded)


def _nothing() -> None:
    pass


def expire(fut: asyncio.Future[Response]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())

"""One worker thread per pod: starts, restarts, probes and stops its containers, reports status.

Each worker is an actor: the watch, the exit waiters and the probers only `post` events to its
queue, and only the worker thread touches its container records, so there are no locks and a
misbehaving pod can only break its own worker (every step is guarded and logged, never raised into
the runner). After each event the worker reconciles the records with the pod spec, then patches the
status subresource if `status.compute_status` yields something the server does not already show.

A runner that restarts kills what the previous instance left running (see `nest.cluster.runner`)
and rebuilds the records from the pod's last reported status: a container that was running counts
as terminated by the restart, so the usual restart policy applies and restartCount goes up.
"""

from __future__ import annotations

import calendar
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from nest.cluster.runner import env as envs
from nest.cluster.runner import process, volumes
from nest.cluster.runner.layout import Layout
from nest.cluster.runner.logs import rotate
from nest.cluster.runner.probes import Prober, Target
from nest.cluster.runner.state import (
    START_FAILED,
    BackoffPolicy,
    ContainerRecord,
    ContainerState,
    Termination,
    should_restart,
)
from nest.cluster.runner.status import PodView, compute_status, needs_patch
from nest.errors import RunnerError

Obj = Mapping[str, Any]
log = logging.getLogger(__name__)
MERGE_PATCH = "application/merge-patch+json"
RETRY_SETUP = 5.0  # seconds between attempts to fetch a missing Secret/ConfigMap


@dataclass(frozen=True)
class NodeContext:
    """What every pod worker of one node shares."""

    node_name: str
    node_dir: str
    api_port: int
    layout: Layout
    core: client.CoreV1Api
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    isolate: bool = True  # private mount namespaces (we are root)


@dataclass(frozen=True)
class Event:
    kind: str  # pod | gone | exited | ready | live | shutdown
    pod: Obj | None = None
    container: str = ""
    pid: int = 0
    code: int = 0  # exit status as Popen reports it; a probe's verdict as 0/1
    at: float = 0.0  # when it happened; for shutdown, the deadline


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


def _termination(raw: Obj) -> Termination:
    return Termination(
        exit_code=int(raw.get("exitCode", 0)),
        finished_at=_parse_time(raw.get("finishedAt")) or time.time(),
        started_at=_parse_time(raw.get("startedAt")),
        signal=raw.get("signal"),
        reason=raw.get("reason") or "",
        message=raw.get("message") or "",
    )


def recover(name: str, init: bool, reported: Obj | None) -> ContainerRecord:
    """A container's record rebuilt from the status a previous runner instance reported."""
    record = ContainerRecord(name=name, init=init)
    if not reported:
        return record
    state, last = reported.get("state") or {}, (reported.get("lastState") or {}).get("terminated")
    count = int(reported.get("restartCount") or 0)
    if "running" in state:
        started = _parse_time(state["running"].get("startedAt"))
        killed = Termination(
            exit_code=137, signal=9, finished_at=time.time(), started_at=started,
            reason="Killed", message="stopped by a restart of the local node's runner",
        )  # fmt: skip
        prev = _termination(last) if last else None
        return replace(record, state=ContainerState.EXITED, restart_count=count, last=killed,
                       previous=prev)  # fmt: skip
    if "terminated" in state:
        prev = _termination(last) if last else None
        return replace(record, state=ContainerState.EXITED, restart_count=count,
                       last=_termination(state["terminated"]), previous=prev)  # fmt: skip
    if last:
        return replace(
            record, state=ContainerState.EXITED, restart_count=count, last=_termination(last)
        )
    return replace(record, restart_count=count)


class PodWorker:
    """Runs one pod (identified by uid) until it is deleted or the runner shuts down."""

    def __init__(self, ctx: NodeContext, pod: Obj, on_done: Callable[[str], None]) -> None:
        meta = pod["metadata"]
        self.name = f"{meta['namespace']}/{meta['name']}"
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"pod-{self.name}")
        self.ctx, self.pod, self.on_done = ctx, pod, on_done
        self.uid: str = meta["uid"]
        self.events: queue.Queue[Event] = queue.Queue()
        spec = pod.get("spec") or {}
        self.init_specs = list(spec.get("initContainers") or [])
        self.main_specs = list(spec.get("containers") or [])
        names = [c["name"] for c in self.init_specs + self.main_specs]
        self.dir = ctx.layout.pod(self.uid)
        self.meta = ctx.layout.claim(self.uid, meta["namespace"], meta["name"], names)
        status = pod.get("status") or {}
        reported = {
            s["name"]: s
            for s in (status.get("initContainerStatuses") or [])
            + (status.get("containerStatuses") or [])
        }
        self.records = {
            c["name"]: recover(c["name"], c in self.init_specs, reported.get(c["name"]))
            for c in self.init_specs + self.main_specs
        }
        self.published: Obj | None = status
        self.start_time = _parse_time(status.get("startTime")) or time.time()
        self.probe_stops: dict[str, threading.Event] = {}
        self.kill_at: dict[str, float] = {}
        self.volume_dirs: dict[str, Path] | None = None
        self.retry_at = 0.0
        self.gone = False
        self.shutdown_by: float | None = None
        self.post(Event("pod", pod=pod))  # the first reconcile needs no outside trigger

    # -- plumbing ------------------------------------------------------------------------------

    def post(self, event: Event) -> None:
        self.events.put(event)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def _run(self) -> None:
        try:
            while True:
                self._step()
                if self._finished():
                    break
        except Exception:
            log.exception("pod %s: worker failed; its processes are being stopped", self.name)
            for pid in [r.pid for r in self.records.values() if r.pid]:
                process.signal_group(pid, signal.SIGKILL)
        finally:
            for stop in self.probe_stops.values():
                stop.set()
            self.on_done(self.uid)

    def _step(self) -> None:
        timers = [*self.kill_at.values(), self.retry_at if self.volume_dirs is None else 0.0]
        timers += [
            r.backoff_until for r in self.records.values() if r.state is ContainerState.BACKOFF
        ]
        pending = [t for t in timers if t > 0]
        timeout = max(0.0, min(pending) - time.time()) if pending else None
        try:
            batch = [self.events.get(timeout=timeout)]
        except queue.Empty:
            batch = []
        while not self.events.empty():
            batch.append(self.events.get_nowait())
        for event in batch:
            self._handle(event)
        self._reconcile()
        # A runner going down leaves the last reported status alone: the pod resumes next start.
        if not self.gone and self.shutdown_by is None and not self._finished():
            self._publish()

    def _finished(self) -> bool:
        stopping = self.gone or self.shutdown_by is not None or self._deleting()
        return stopping and not self._live()

    def _live(self) -> list[str]:
        live = (ContainerState.RUNNING, ContainerState.STOPPING)
        return [n for n, r in self.records.items() if r.state in live]

    def _deleting(self) -> bool:
        return bool(self.pod["metadata"].get("deletionTimestamp"))

    def _set(self, record: ContainerRecord) -> None:
        self.records[record.name] = record

    # -- events --------------------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        if event.kind == "pod" and event.pod is not None:
            self.pod, self.published = event.pod, event.pod.get("status") or {}
        elif event.kind == "gone":
            self.gone = True
        elif event.kind == "shutdown":
            self.shutdown_by = event.at
        elif event.kind == "exited":
            self._exited(event)
        elif event.kind in ("ready", "live"):
            record = self.records[event.container]
            if record.pid != event.pid or record.state is not ContainerState.RUNNING:
                return
            if event.kind == "ready":
                self._set(replace(record, ready=bool(event.code)))
            elif not event.code:
                log.info("pod %s: %s failed its liveness probe", self.name, record.name)
                self._stop(record, self._grace())

    def _exited(self, event: Event) -> None:
        record = self.records[event.container]
        if record.pid != event.pid:
            return
        self.kill_at.pop(record.name, None)
        stop = self.probe_stops.pop(record.name, None)
        if stop is not None:
            stop.set()
        # Whatever the program left in its process group goes with it, as with a cgroup.
        process.signal_group(event.pid, signal.SIGKILL)
        rc = event.code
        term = Termination(
            exit_code=rc if rc >= 0 else 128 - rc,
            signal=-rc if rc < 0 else None,
            started_at=record.started_at,
            finished_at=event.at,
            pid=event.pid,
        )
        self._set(
            record.move(
                ContainerState.EXITED, last=term, previous=record.last, pid=None, ready=False
            )
        )

    # -- reconciliation ------------------------------------------------------------------------

    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod.get("spec") or {}
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds")
        return float(30 if grace is None else grace)

    def _stop(self, record: ContainerRecord, grace: float) -> None:
        assert record.pid is not None
        process.signal_group(record.pid, signal.SIGTERM)
        self.kill_at[record.name] = time.time() + grace
        self._set(record.move(ContainerState.STOPPING))

    def _reconcile(self) -> None:
        if self.gone or self.shutdown_by is not None or self._deleting():
            self._wind_down()
            return
        if self.volume_dirs is None and not self._setup():
            return
        for spec in self.init_specs:
            record = self.records[spec["name"]]
            if record.state is ContainerState.EXITED and record.last and record.last.succeeded:
                continue
            self._drive(spec, record)
            for main in self.main_specs:
                waiting = self.records[main["name"]]
                if waiting.state is ContainerState.PENDING:
                    self._set(replace(waiting, waiting_reason="PodInitializing"))
            return
        for spec in self.main_specs:
            self._drive(spec, self.records[spec["name"]])

    def _wind_down(self) -> None:
        now = time.time()
        grace = self._grace()
        if self.shutdown_by is not None:
            grace = min(grace, max(0.0, self.shutdown_by - now))
        for name in self._live():
            record = self.records[name]
            if record.state is ContainerState.RUNNING:
                self._stop(record, grace)
            elif now >= self.kill_at.get(name, now) and record.pid is not None:
                process.signal_group(record.pid, signal.SIGKILL)
                self.kill_at[name] = now + 5.0  # SIGKILL again if it is somehow still there
        if self._live() or self.shutdown_by is not None:
            return
        self.dir.remove()
        if not self.gone:
            meta = self.pod["metadata"]
            try:
                self.ctx.core.delete_namespaced_pod(
                    meta["name"], meta["namespace"], grace_period_seconds=0,
                    body=client.V1DeleteOptions(
                        grace_period_seconds=0, preconditions=client.V1Preconditions(uid=self.uid)
                    ),
                )  # fmt: skip
            except ApiException as err:
                if err.status not in (404, 409):
                    raise

    def _setup(self) -> bool:
        if time.time() < self.retry_at:
            return False
        facts = envs.PodFacts(self.meta.ip)
        fetch = volumes.Fetch(self._config_map, self._secret, self._token)
        try:
            self.volume_dirs = volumes.prepare(self.pod, self.dir, facts, fetch)
        except (RunnerError, ApiException, OSError) as err:
            message = f"setting up volumes: {getattr(err, 'reason', None) or err}"
            log.warning("pod %s: %s", self.name, message)
            for record in self.records.values():
                if record.state is ContainerState.PENDING:
                    self._set(replace(record, waiting_message=message))
            self.retry_at = time.time() + RETRY_SETUP
            return False
        return True

    def _drive(self, spec: Obj, record: ContainerRecord) -> None:
        now = time.time()
        policy = (self.pod.get("spec") or {}).get("restartPolicy") or "Always"
        if record.state is ContainerState.EXITED:
            assert record.last is not None
            if should_restart(policy, record.last, record.init):
                ran = record.last.finished_at - (record.last.started_at or record.last.finished_at)
                delay = self.ctx.backoff.next_delay(record.backoff, ran)
                self._set(
                    record.move(ContainerState.BACKOFF, backoff=delay, backoff_until=now + delay)
                )
        elif record.state is ContainerState.PENDING or (
            record.state is ContainerState.BACKOFF and now >= record.backoff_until
        ):
            self._start(spec, record)

    # -- starting ------------------------------------------------------------------------------

    def _start(self, spec: Obj, record: ContainerRecord) -> None:
        restarts = record.restart_count + (record.state is ContainerState.BACKOFF)
        logfile = rotate(self.dir, record.name)
        started = time.time()
        try:
            env, argv, mounts = self._resolve(spec)
            popen = process.start(
                process.Launch(argv, env, spec.get("workingDir"), mounts, logfile, self.ctx.isolate)
            )
        except (RunnerError, process.StartError, ApiException) as err:
            code = err.code if isinstance(err, process.StartError) else 128
            message = err.message if isinstance(err, process.StartError) else str(err)
            with logfile.open("a") as f:
                f.write(f"nest: container {record.name} could not start: {message}\n")
            term = Termination(code, time.time(), reason=START_FAILED, message=message)
            self._set(record.move(ContainerState.EXITED, last=term, previous=record.last,
                                  restart_count=restarts))  # fmt: skip
            return
        ready = "readinessProbe" not in spec
        self._set(record.move(ContainerState.RUNNING, pid=popen.pid, started_at=started,
                              ready=ready, restart_count=restarts))  # fmt: skip
        threading.Thread(
            target=self._wait, args=(record.name, popen), daemon=True, name=f"wait-{popen.pid}"
        ).start()
        self._start_probes(spec, popen.pid, env)

    def _wait(self, name: str, popen: subprocess.Popen[bytes]) -> None:
        rc = popen.wait()
        self.post(Event("exited", container=name, pid=popen.pid, code=rc, at=time.time()))

    def _resolve(self, spec: Obj) -> tuple[dict[str, str], list[str], list[volumes.Mount]]:
        names_cm, names_secret = envs.referenced_objects(spec)
        sources = envs.Sources(
            {n: d for n in names_cm if (d := self._config_map_data(n)) is not None},
            {n: d for n in names_secret if (d := self._secret_data(n)) is not None},
        )
        base = envs.base_env(self.pod, self.ctx.api_port, self.ctx.node_dir, os.environ)
        env = envs.container_env(self.pod, spec, envs.PodFacts(self.meta.ip), sources, base)
        argv = envs.command_line(spec, env)
        assert self.volume_dirs is not None
        return env, argv, volumes.mounts(spec, self.volume_dirs)

    def _start_probes(self, spec: Obj, pid: int, env: Mapping[str, str]) -> None:
        ports = {
            p["name"]: int(p["containerPort"]) for p in spec.get("ports") or [] if p.get("name")
        }
        target = Target(self.meta.ip, pid, env, ports, self.ctx.isolate)
        stop = threading.Event()
        self.probe_stops[spec["name"]] = stop
        for key, initial, kind in (
            ("readinessProbe", False, "ready"),
            ("livenessProbe", True, "live"),
        ):
            if spec.get(key):

                def report(ok: bool, kind: str = kind) -> None:
                    self.post(Event(kind, container=spec["name"], pid=pid, code=int(ok)))

                Prober(spec[key], target, initial, report, stop).start()

    # -- API reads and writes ------------------------------------------------------------------

    def _read(self, fn: Callable[..., Any], name: str) -> Obj | None:
        try:
            resp = fn(name, self.pod["metadata"]["namespace"], _preload_content=False)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        result: Obj = json.loads(resp.data)
        return result

    def _config_map(self, name: str) -> Obj | None:
        return self._read(self.ctx.core.read_namespaced_config_map, name)

    def _secret(self, name: str) -> Obj | None:
        return self._read(self.ctx.core.read_namespaced_secret, name)

    def _config_map_data(self, name: str) -> dict[str, str] | None:
        obj = self._config_map(name)
        return None if obj is None else dict(obj.get("data") or {})

    def _secret_data(self, name: str) -> dict[str, str] | None:
        obj = self._secret(name)
        if obj is None:
            return None
        files = volumes.object_files(obj, binary=True)
        return {k: v.decode(errors="replace") for k, v in files.items()}

    def _token(self, service_account: str, audiences: list[str], seconds: int) -> str:
        spec = client.V1TokenRequestSpec(audiences=audiences, expiration_seconds=seconds)
        granted = self.ctx.core.create_namespaced_service_account_token(
            service_account,
            self.pod["metadata"]["namespace"],
            client.AuthenticationV1TokenRequest(spec=spec),
        )
        if granted.status is None:
            raise RunnerError(f"no token granted for service account {service_account}")
        return str(granted.status.token)

    def _publish(self) -> None:
        view = PodView(self.meta.ip, self.start_time, dict(self.records))
        wanted = compute_status(self.pod, view, self.published, time.time())
        if not needs_patch(self.published, wanted):
            return
        meta = self.pod["metadata"]
        try:
            self.ctx.core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], {"status": wanted}, _content_type=MERGE_PATCH
            )
        except ApiException as err:
            if err.status != 404:
                raise
            self.gone = True
            return
        self.published = {**(self.published or {}), **wanted}

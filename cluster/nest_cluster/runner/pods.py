"""One worker thread per pod: starts, restarts, probes and stops its containers, reports status.

Each worker is an actor: the watch, the exit waiters and the probers only `post` events to its
queue, and only the worker thread touches its container records, so there are no locks and a
misbehaving pod can only break its own worker (every step is guarded and logged, never raised into
the runner). After each event the worker reconciles the records with the pod spec, then patches the
status subresource if `status.compute_status` yields something the server does not already show.
A status write that fails (the API server restarting, say) is tried again after a back-off and
never stops the pod's processes; one answered "gone" (404, or another pod under the name) ends
the worker as a deletion does. The worker's API calls run on the runner's loop (`kube`).

What a container starts WITH (credentials, cgroup, PID namespace) is the pod sandbox's business
(containers.py), and so is its termination message file, which this worker reads into the
record when the instance exits (termination.py); projected service-account tokens are renewed
from this worker's timers, like the kubelet's token manager does, before they expire.

A runner that restarts kills what the previous instance left running (see `nest_cluster.runner`)
and rebuilds the records from the pod's last reported status: a container that was running counts
as terminated by the restart, so the usual restart policy applies and restartCount goes up.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nest_cluster.errors import RunnerError
from nest_cluster.runner import cgroups, process, termination, volumes
from nest_cluster.runner import env as envs
from nest_cluster.runner.containers import Host, PodSandbox
from nest_cluster.runner.kube import PodAPI, RunnerKube, Written
from nest_cluster.runner.layout import Layout
from nest_cluster.runner.logs import next_log, promote
from nest_cluster.runner.probes import Prober, Target
from nest_cluster.runner.security import CONFIG_ERROR, ConfigError, read_last_cap
from nest_cluster.runner.state import (
    START_FAILED,
    BackoffPolicy,
    ContainerRecord,
    ContainerState,
    Termination,
    parse_time,
    recover,
    should_restart,
)
from nest_cluster.runner.status import PodView, compute_status, needs_patch
from nest_kube import ApiError, Backoff

Obj = Mapping[str, Any]
log = logging.getLogger(__name__)
RETRY_SETUP = 5.0  # seconds between attempts to fetch a missing Secret/ConfigMap
RETRY_TOKEN = 10.0  # seconds before retrying a token renewal that failed


@dataclass(frozen=True)
class NodeContext:
    """What every pod worker of one node shares."""

    node_name: str
    node_dir: str
    api_port: int
    layout: Layout
    kube: RunnerKube
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    isolate: bool = True  # namespaces, cgroups and credentials (we are root)
    cgroups: cgroups.Support = field(default_factory=lambda: cgroups.Support(problem="unknown"))
    last_cap: int = field(default_factory=read_last_cap)

    @property
    def host(self) -> Host:
        return Host(cgroups.node_key(self.node_name, self.node_dir), self.isolate, self.cgroups,
                    self.last_cap)  # fmt: skip


@dataclass(frozen=True)
class Event:
    kind: str  # pod | gone | exited | ready | live | shutdown
    pod: Obj | None = None
    container: str = ""
    pid: int = 0
    code: int = 0  # exit status as Popen reports it; a probe's verdict as 0/1
    at: float = 0.0  # when it happened; for shutdown, the deadline


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
        self.start_time = parse_time(status.get("startTime")) or time.time()
        self.probe_stops: dict[str, threading.Event] = {}
        self.kill_at: dict[str, float] = {}
        self.volume_dirs: dict[str, Path] | None = None
        self.sandbox = PodSandbox(ctx.host, pod, self.dir.containers)
        self.api = PodAPI(ctx.kube, lambda: self.pod)
        self.tokens: dict[Path, volumes.TokenFile] = {}
        self.token_due: dict[Path, float] = {}
        self.retry_at = 0.0
        self.status_retry_at = 0.0  # a status write failed: not again before this
        self.status_backoff = Backoff()
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
            try:
                self.sandbox.close()
            except Exception:
                log.exception("pod %s: releasing its PID namespace and cgroups failed", self.name)
            self.on_done(self.uid)

    def _step(self) -> None:
        timers = [*self.kill_at.values(), self.retry_at if self.volume_dirs is None else 0.0]
        timers += [*self.token_due.values(), self.status_retry_at]
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
        self._refresh_tokens()
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

    def _spec(self, name: str) -> Obj:
        return next(c for c in self.init_specs + self.main_specs if c["name"] == name)

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
        # Whatever the program left in its process group goes with it, and so does its cgroup
        # (with what a shared PID namespace let survive the program).
        process.signal_group(event.pid, signal.SIGKILL)
        ended = self.sandbox.ended(record.name)
        rc = event.code
        exit_code = rc if rc >= 0 else 128 - rc
        message = termination.collect(
            self._spec(record.name), exit_code, ended.message_file, self.dir.log(record.name)
        )
        term = Termination(
            exit_code=exit_code,
            signal=-rc if rc < 0 else None,
            started_at=record.started_at,
            finished_at=event.at,
            pid=event.pid,
            reason="OOMKilled" if ended.oom_killed and rc == -signal.SIGKILL else "",
            message=termination.cut(message, termination.pod_share(len(self.records))),
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
        process.terminate(record.pid, self.ctx.isolate)
        self.kill_at[record.name] = time.time() + grace
        self._set(record.move(ContainerState.STOPPING))

    def _kill_if_overdue(self, record: ContainerRecord, now: float) -> None:
        """A stopping container still there past its grace is killed (the kubelet's rule)."""
        if now >= self.kill_at.get(record.name, now) and record.pid is not None:
            process.signal_group(record.pid, signal.SIGKILL)
            self.kill_at[record.name] = now + 5.0  # SIGKILL again if it is somehow still there

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
            else:
                self._kill_if_overdue(record, now)
        if self._live() or self.shutdown_by is not None:
            return
        self.dir.remove()
        if not self.gone:
            self.ctx.kube.finish_deletion(self.pod)

    def _setup(self) -> bool:
        if time.time() < self.retry_at:
            return False
        facts = envs.PodFacts(self.meta.ip)
        fetch = self.api.fetch(self._issued)
        try:
            self.volume_dirs = volumes.prepare(self.pod, self.dir, facts, fetch)
        except (RunnerError, ApiError, OSError) as err:
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
        elif record.state is ContainerState.STOPPING:
            # Stopped by a failed liveness probe: one that ignores SIGTERM (or drains longer
            # than the grace) is killed at the grace's end, then restarted by its policy.
            self._kill_if_overdue(record, now)

    # -- starting ------------------------------------------------------------------------------

    def _start(self, spec: Obj, record: ContainerRecord) -> None:
        restarts = record.restart_count + (record.state is ContainerState.BACKOFF)
        try:
            creds = self.sandbox.resolve(self.pod, spec)
        except ConfigError as err:
            self._config_error(record, str(err), restarts)
            return
        logfile = next_log(self.dir, record.name)
        started = time.time()
        try:
            env, argv, mounts = self._resolve(spec)
            launch = self.sandbox.launch(spec, creds, restarts, argv, env, mounts, logfile)
            popen = process.start(launch)
        except (RunnerError, process.StartError, ApiError) as err:
            # The cgroup and message file of an instance that never ran; no log to fall back to.
            ended = self.sandbox.ended(record.name)
            if ended.message_file is not None:
                ended.message_file.unlink(missing_ok=True)
            code = err.code if isinstance(err, process.StartError) else 128
            message = err.message if isinstance(err, process.StartError) else str(err)
            with logfile.open("a") as f:
                f.write(f"nest: container {record.name} could not start: {message}\n")
            promote(self.dir, record.name)
            term = Termination(code, time.time(), reason=START_FAILED, message=message)
            self._set(record.move(ContainerState.EXITED, last=term, previous=record.last,
                                  restart_count=restarts))  # fmt: skip
            return
        promote(self.dir, record.name)
        ready = "readinessProbe" not in spec
        self._set(record.move(ContainerState.RUNNING, pid=popen.pid, started_at=started,
                              ready=ready, restart_count=restarts))  # fmt: skip
        threading.Thread(
            target=self._wait, args=(record.name, popen), daemon=True, name=f"wait-{popen.pid}"
        ).start()
        self._start_probes(spec, popen.pid, env)

    def _config_error(self, record: ContainerRecord, message: str, restarts: int) -> None:
        """The kubelet's CreateContainerConfigError: the container waits, with the reason."""
        if record.state is ContainerState.PENDING:
            if record.waiting_message != message:
                log.warning("pod %s: %s", self.name, message)
                self._set(replace(record, waiting_reason=CONFIG_ERROR, waiting_message=message))
            return
        term = Termination(128, time.time(), reason=CONFIG_ERROR, message=message)
        self._set(record.move(ContainerState.EXITED, last=term, previous=record.last,
                              restart_count=restarts))  # fmt: skip

    def _wait(self, name: str, popen: subprocess.Popen[bytes]) -> None:
        rc = popen.wait()
        self.post(Event("exited", container=name, pid=popen.pid, code=rc, at=time.time()))

    def _resolve(self, spec: Obj) -> tuple[dict[str, str], list[str], list[volumes.Mount]]:
        names_cm, names_secret = envs.referenced_objects(spec)
        sources = envs.Sources(
            {n: d for n in names_cm if (d := self.api.config_map_data(n)) is not None},
            {n: d for n in names_secret if (d := self.api.secret_data(n)) is not None},
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
        instance = self.sandbox.instances.get(spec["name"])
        target = Target(self.meta.ip, pid, env, ports, self.ctx.isolate,
                        instance.security if instance else None,
                        instance.procs_inside if instance else ())  # fmt: skip
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

    # -- projected tokens ----------------------------------------------------------------------

    def _issued(self, token: volumes.TokenFile) -> None:
        self.tokens[token.path] = token
        # The kubelet's jitter: renewals of many pods do not all land in the same second.
        self.token_due[token.path] = volumes.refresh_at(token, jitter=random.uniform(0, 10))

    def _refresh_tokens(self) -> None:
        if self.gone or self.shutdown_by is not None or self._deleting():
            self.token_due.clear()
            return
        now = time.time()
        for path, due in list(self.token_due.items()):
            if now < due:
                continue
            try:
                self._issued(volumes.refresh(self.tokens[path], self.api.fetch(self._issued)))
            except (RunnerError, ApiError, OSError) as err:
                log.warning("pod %s: renewing token %s failed (%s)", self.name, path, err)
                self.token_due[path] = now + RETRY_TOKEN

    # -- status --------------------------------------------------------------------------------

    def _publish(self) -> None:
        now = time.time()
        if now < self.status_retry_at:
            return
        view = PodView(self.meta.ip, self.start_time, dict(self.records), self.sandbox.message)
        wanted = compute_status(self.pod, view, self.published, now)
        if not needs_patch(self.published, wanted):
            return
        try:
            written = self.ctx.kube.write_status(self.pod, wanted)
        except ApiError as err:  # the loop did not answer in time
            log.warning("pod %s: status not written (%s)", self.name, err)
            written = Written.FAILED
        if written is Written.GONE:
            self.post(Event("gone"))  # wind down now, not at whatever event comes next
        elif written is Written.FAILED:
            # `published` stays as it was, so the next attempt writes the status then current.
            self.status_retry_at = now + self.status_backoff.next()
        else:
            self.status_retry_at = 0.0
            self.published = {**(self.published or {}), **wanted}

"""The sidecar process: wires the informer, the runtime pump, the workers and the heartbeat.

Kubernetes is reached only through the shared layer (`nest_kube`): credentials by `connect()`'s
rule (the pod's service account in a cluster), every call through one `HttpApi` on this loop,
the Sandboxes bound to this pod through one `Informer` (a label selector on the pod's uid, so
the API server filters and a pool pod never sees another pod's sandboxes), Events through one
`EventRecorder`.

Start-up order matters for restart safety: workers start only after both the watch has listed
what is bound to this pod and the runtime has listed what it runs, so a worker that finds its
sandbox already running adopts it (same process) instead of starting a second copy. Runtime
sandboxes with no Sandbox object behind them are removed once both lists are in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from kubernetes.utils.quantity import parse_quantity
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from crds.constants import POD_UID_LABEL
from crds.sandbox import EVICTED_REASON
from nest_kube import (
    DELETED,
    Api,
    ConfigError,
    Delta,
    EventRecorder,
    EventSource,
    HttpApi,
    Informer,
    connect,
)
from nest_kube.resources import SANDBOXES
from nest_sidecar.code_cache import DEFAULT_IDLE_SECONDS, CodeCache
from nest_sidecar.cri import NativePins, RuntimeAPI, RuntimePump
from nest_sidecar.fetcher import CodeFetcher, FetchTimeouts
from nest_sidecar.kube import KubeShell
from nest_sidecar.lease import Capacity, Heartbeat, PodRef, capacity_from_env
from nest_sidecar.packages import PackageFetcher, PullCounters
from nest_sidecar.server import SidecarMetrics, StateCollector, health_app
from nest_sidecar.status import Observed
from nest_sidecar.status_manager import StatusManager
from nest_sidecar.worker import Backoff, PodIdentity, SandboxWorker
from sandbox.api import SandboxInfo
from sandbox.client import RuntimeClient

log = logging.getLogger("nest_sidecar")
# Threads only for file work (unpacking code into the cache); API calls need none.
FILE_THREADS = 16
UID_INDEX = "uid"
EVENT_SOURCE = "nest-sidecar"
REPORTING_CONTROLLER = "nest.sandbox.dev/sidecar"
WORKER_RETRY = 1.0  # seconds before a worker that failed unexpectedly is replaced


@dataclass(frozen=True)
class Settings:
    pod_name: str
    pod_namespace: str
    pod_uid: str
    pod_ip: str
    runtime_socket: str
    runtime_port: int
    code_cache: Path
    health_port: int
    lease_interval: float
    backoff_initial: float
    grace_seconds: float
    pool: str
    capacity: Capacity
    fetch_timeouts: FetchTimeouts = field(default_factory=FetchTimeouts)
    code_cache_bytes: int = 1 << 30
    code_cache_idle: float = DEFAULT_IDLE_SECONDS
    kubeconfig: str | None = None
    # After SIGTERM, how long the sidecar keeps serving while Sandboxes are bound to it (its
    # pod is being deleted: their replica sets move them first); 0: stop at once.
    drain_seconds: float = 0.0


def parse_settings(argv: Sequence[str] | None, env: Mapping[str, str]) -> Settings:
    """Flags win over env (the pod's downward API), env over defaults."""
    p = argparse.ArgumentParser(
        prog="nest-sidecar",
        description="Nest sidecar: runs the Sandboxes bound to this pool pod (a kubelet for "
        "sandboxes). Identity comes from the downward API: POD_NAME, POD_NAMESPACE, POD_UID, "
        "POD_IP.",
    )
    p.add_argument("--pod-name", default=env.get("POD_NAME"))
    p.add_argument("--pod-namespace", default=env.get("POD_NAMESPACE", "default"))
    p.add_argument("--pod-uid", default=env.get("POD_UID"))
    p.add_argument("--pod-ip", default=env.get("POD_IP", "127.0.0.1"))
    p.add_argument(
        "--runtime-socket",
        default=env.get("NEST_RUNTIME_SOCKET", "/var/run/nest/runtime.sock"),
        help="the runtime's control socket (env NEST_RUNTIME_SOCKET)",
    )
    p.add_argument(
        "--runtime-port",
        type=int,
        default=int(env.get("NEST_RUNTIME_PORT", "8080")),
        help="the runtime's data-plane port, published in Sandbox status",
    )
    p.add_argument("--code-cache", default=env.get("NEST_CODE_CACHE", "/var/lib/nest/code"))
    p.add_argument("--health-port", type=int, default=int(env.get("NEST_SIDECAR_PORT", "8081")))
    p.add_argument("--lease-interval", type=float, default=10.0, help="heartbeat period, s")
    p.add_argument(
        "--backoff", type=float, default=0.5, help="first restart back-off, s (doubles to 60)"
    )
    p.add_argument("--grace", type=float, default=5.0, help="grace period when stopping, s")
    p.add_argument("--pool", default=env.get("NEST_POOL") or "default", help="env NEST_POOL")
    p.add_argument(
        "--fetch-connect-timeout", type=float, default=30.0,
        help="seconds to connect to a url code source's server",
    )  # fmt: skip
    p.add_argument(
        "--fetch-read-timeout", type=float, default=30.0,
        help="seconds a url code source's server may send nothing (headers or body)",
    )  # fmt: skip
    p.add_argument(
        "--fetch-timeout", type=float, default=300.0, help="seconds for a whole code download"
    )
    p.add_argument(
        "--code-cache-bytes", default="1Gi",
        help="size budget of the code cache (a quantity: 512Mi, 2Gi); entries in use stay "
        "even beyond it",
    )  # fmt: skip
    p.add_argument(
        "--code-cache-idle", type=float, default=DEFAULT_IDLE_SECONDS,
        help="seconds code no sandbox uses stays cached (less when over the budget)",
    )  # fmt: skip
    p.add_argument(
        "--kubeconfig", default=None,
        help="kubeconfig file (else the pod's service account, else $KUBECONFIG)",
    )  # fmt: skip
    p.add_argument(
        "--drain-seconds", type=float, default=float(env.get("NEST_DRAIN_SECONDS") or 0),
        help="after SIGTERM, the longest it keeps serving bound Sandboxes (env "
        "NEST_DRAIN_SECONDS; a little less than the pod's terminationGracePeriodSeconds)",
    )  # fmt: skip
    a = p.parse_args(argv)
    if not a.pod_name or not a.pod_uid:
        p.error("--pod-name and --pod-uid (or POD_NAME and POD_UID) are required")
    try:
        cache_bytes = int(parse_quantity(a.code_cache_bytes))
    except ValueError:
        p.error(f"--code-cache-bytes: {a.code_cache_bytes!r} is not a quantity")
    timeouts = (a.fetch_connect_timeout, a.fetch_read_timeout, a.fetch_timeout)
    if cache_bytes < 0 or a.code_cache_idle < 0 or min(timeouts) <= 0:
        p.error("timeouts must be positive, the code cache's budget and idle time not negative")
    return Settings(
        a.pod_name, a.pod_namespace, a.pod_uid, a.pod_ip, a.runtime_socket, a.runtime_port,
        Path(a.code_cache), a.health_port, a.lease_interval, a.backoff, a.grace, a.pool,
        capacity_from_env(env), FetchTimeouts(*timeouts), cache_bytes, a.code_cache_idle,
        a.kubeconfig, max(0.0, a.drain_seconds),
    )  # fmt: skip


def serving(sandbox: Mapping[str, Any]) -> bool:
    """Whether a bound Sandbox still needs this sidecar: it runs here, or is being deleted and
    waits for us to stop it and release it. An evicted one was replaced elsewhere."""
    return (sandbox.get("status") or {}).get("reason") != EVICTED_REASON


class PullCollector(Collector):
    """The package fetcher's counters on /metrics: what this pod downloaded and unpacked, per
    layer digest (a layer shared by ten functions shows 1, not 10)."""

    def __init__(self, counters: PullCounters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        c = self.counters
        pulls = CounterMetricFamily("nest_sidecar_package_pulls", "Function packages pulled")
        pulls.add_metric([], c.pulls)
        fetched = CounterMetricFamily(
            "nest_sidecar_layer_blob_fetches", "Layer blobs downloaded", labels=["digest"]
        )
        for digest, count in sorted(c.fetched.items()):
            fetched.add_metric([digest], count)
        size = CounterMetricFamily("nest_sidecar_layer_fetched_bytes", "Layer bytes downloaded")
        size.add_metric([], c.bytes_fetched)
        unpacked = CounterMetricFamily(
            "nest_sidecar_layer_unpacks", "Layers unpacked into the code cache", labels=["digest"]
        )
        for digest, count in sorted(c.unpacked.items()):
            unpacked.add_metric([digest], count)
        yield from (pulls, fetched, size, unpacked)


def by_uid(obj: Mapping[str, Any]) -> list[str]:
    """The informer's index of Sandboxes by uid: workers, the runtime and the cache key by it."""
    return [str(obj["metadata"]["uid"])]


class Sidecar:
    """All the parts of one sidecar, on one event loop."""

    def __init__(self, settings: Settings, api: Api, runtime: RuntimeAPI) -> None:
        self.settings = settings
        self.api = api
        self.runtime = runtime
        self.informer = Informer(
            api, SANDBOXES, label_selector=f"{POD_UID_LABEL}={settings.pod_uid}",
            indexers={UID_INDEX: by_uid},
        )  # fmt: skip
        self.recorder = EventRecorder(
            api,
            EventSource(
                EVENT_SOURCE, host=settings.pod_name,
                reporting_controller=REPORTING_CONTROLLER, reporting_instance=settings.pod_name,
            ),
        )  # fmt: skip
        self.kube = KubeShell(api, self.recorder)
        self.metrics = SidecarMetrics()
        self.status = StatusManager(
            self.kube, self.sandbox,
            on_write=self.metrics.status_writes.inc, on_repair=self.metrics.status_repairs.inc,
        )  # fmt: skip
        self.pump = RuntimePump(
            runtime, self._runtime_changed, name_of=self._name_of, on_outage=self._runtime_outage
        )
        self.workers: dict[str, SandboxWorker] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.started = False
        self.changed = asyncio.Event()  # the bound Sandboxes changed (a drain waits on it)
        self.heartbeat: Heartbeat | None = None
        self.pod = PodIdentity(settings.pod_name, settings.pod_ip, settings.runtime_port)
        self.cache = CodeCache(
            settings.code_cache,
            budget_bytes=settings.code_cache_bytes,
            idle_seconds=settings.code_cache_idle,
        )
        self.packages = PackageFetcher(self.cache, self.kube.read_secret)
        # Layers the runtime loaded natives from stay while it lives (nest_sidecar.cri).
        self.native_pins = NativePins(self.cache, runtime)
        self.pump.on_info = self.native_pins.observe
        self.metrics.registry.register(PullCollector(self.packages.counters))
        self.metrics.registry.register(StateCollector(
            lambda: [w.observed.phase.value for w in self.workers.values()],
            lambda: self.pump.restarts,
        ))  # fmt: skip

    def sandbox(self, uid: str) -> Mapping[str, Any] | None:
        """The watch's latest Sandbox of that uid (bound to this pod), None when there is none."""
        found = self.informer.store.by_index(UID_INDEX, uid)
        return found[0] if found else None

    def bound(self) -> dict[str, Mapping[str, Any]]:
        """Every Sandbox bound to this pod, by uid, as the watch has them now."""
        return {str(obj["metadata"]["uid"]): obj for obj in self.informer.store.list()}

    def _report(self, obj: Mapping[str, Any], observed: Observed) -> None:
        self.status.report(obj, observed)

    def _name_of(self, sandbox_id: str) -> str:
        """`namespace/name` of one of our sandboxes (ids are UIDs), for crash messages."""
        worker = self.workers.get(sandbox_id)  # else (its worker is being replaced): the watch's
        obj = worker.obj if worker is not None else self.sandbox(sandbox_id)
        if obj is None:
            return sandbox_id
        meta = obj["metadata"]
        return f"{meta['namespace']}/{meta['name']}"

    def _runtime_changed(self, sandbox_id: str, info: SandboxInfo | None) -> None:
        worker = self.workers.get(sandbox_id)
        if worker is not None:
            worker.runtime_changed(info)

    def _runtime_outage(self, why: str | None) -> None:
        """The runtime is declared lost (or back): every worker's sandbox is (or is again) not
        ready — theirs, not only the ones the pump knows, so one just created hears it too."""
        for worker in self.workers.values():
            worker.runtime_outage(why)

    def ready(self) -> tuple[bool, str]:
        if not self.informer.synced.is_set():
            return False, "waiting for the sandbox watch to sync"
        if not self.pump.ready.is_set():
            return False, "waiting for the runtime"
        if self.heartbeat is None or self.heartbeat.last_renewed is None:
            # The scheduler places sandboxes only on pods with a Lease: not schedulable yet.
            return False, "waiting for the first Lease renewal"
        return True, f"ok: {len(self.workers)} sandboxes"

    async def _loaded_natives(self) -> list[str]:
        """The runtime's loaded compiled distributions, for the Lease (the scheduler's)."""
        info = await self.runtime.info()
        self.native_pins.observe(info)
        return info.native_distributions

    def _on_event(self, event: Delta) -> None:
        self.changed.set()
        uid = str(event.obj["metadata"]["uid"])
        if event.type == DELETED:
            # Gone without our finalizer being released (force-removed): stop what remains.
            task = self.tasks.pop(uid, None)
            self.workers.pop(uid, None)
            self.status.forget(uid)
            self.native_pins.release(uid)
            if task is not None:
                task.cancel()
                asyncio.get_running_loop().create_task(self._remove_quietly(uid))
            return
        worker = self.workers.get(uid)
        if worker is not None:
            worker.update(event.obj)
        elif self.started:
            self._start_worker(event.obj)

    async def _remove_quietly(self, uid: str) -> None:
        with contextlib.suppress(Exception):
            await self.runtime.remove(uid, self.settings.grace_seconds)

    def _start_worker(self, obj: Mapping[str, Any]) -> None:
        uid = str(obj["metadata"]["uid"])
        worker = SandboxWorker(
            obj,
            runtime=self.runtime,
            fetcher=self.fetcher,
            kube=self.kube,
            report=self._report,
            pod=self.pod,
            backoff=Backoff(initial=self.settings.backoff_initial),
            grace_seconds=self.settings.grace_seconds,
        )
        worker.runtime_info = self.pump.known.get(uid)
        worker.outage = self.pump.outage
        self.workers[uid] = worker

        def finished(task: asyncio.Task[None]) -> None:
            if self.tasks.get(uid) is not task:
                return
            self.tasks.pop(uid, None)
            self.workers.pop(uid, None)
            self.status.forget(uid)
            if task.cancelled():
                return  # shutting down: the pin outlives us, for the next sidecar's adoption
            if task.exception() is not None:
                # A worker's own bug: start a fresh one on the latest object after a pause,
                # rather than leave the sandbox without anyone looking after it.
                asyncio.get_running_loop().call_later(WORKER_RETRY, self._restart_worker, uid)
            else:  # it stopped the sandbox and released the finalizer: the code is unused
                self.native_pins.release(uid)

        task = asyncio.get_running_loop().create_task(worker.run(), name=f"sandbox-{uid}")
        task.add_done_callback(finished)
        self.tasks[uid] = task

    def _restart_worker(self, uid: str) -> None:
        latest = self.sandbox(uid)
        if latest is not None and uid not in self.workers:
            self._start_worker(latest)

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        pod = PodRef(s.pod_name, s.pod_namespace, s.pod_uid, s.pool)
        log.info("pod %s/%s capacity %s", s.pod_namespace, s.pod_name, s.capacity)
        heartbeat = Heartbeat(
            self.api, pod, s.capacity, interval=s.lease_interval, natives=self._loaded_natives
        )
        self.heartbeat = heartbeat
        runner = web.AppRunner(health_app(self.ready, self.metrics), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, s.pod_ip, s.health_port).start()
        try:
            await asyncio.to_thread(self.cache.recover)
            await asyncio.to_thread(self.packages.recover)
        except OSError as exc:  # fetches will fail naming the cache; the sidecar still reports
            log.error("code cache %s unusable: %s", s.code_cache, exc)
        async with aiohttp.ClientSession() as http:
            self.fetcher = CodeFetcher(
                self.cache, self.kube.read_configmap, http, s.fetch_timeouts, self.packages
            )
            background = [
                loop.create_task(self.pump.run(), name="runtime-pump"),
                loop.create_task(self.status.run(), name="status-manager"),
                loop.create_task(heartbeat.run(), name="heartbeat"),
            ]
            self.informer.add_handler(self._on_event)
            background.append(self.informer.start())
            try:
                await self._start_workers(stop)
                if self.started:
                    # Pins of Sandboxes deleted while no sidecar watched go; then collect.
                    self.cache.retain(set(self.bound()))
                    background.append(loop.create_task(self.cache.run(), name="code-cache"))
                await stop.wait()
            finally:
                for task in [*background, *self.tasks.values()]:
                    task.cancel()
                await asyncio.gather(*background, *self.tasks.values(), return_exceptions=True)
                await self.status.flush()
                await self.recorder.close()
                await runner.cleanup()

    async def drain(self, term: asyncio.Event, stop: asyncio.Event) -> None:
        """After SIGTERM (`term`), keep serving until no bound Sandbox needs us (their replica
        sets replaced them and deleted them, and we stopped and released each) or the drain
        time runs out; then `stop`. Sandboxes evicted meanwhile are removed from the runtime,
        which waits for its sandboxes to go before it stops."""
        await term.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_seconds
        left = [o for o in self.bound().values() if serving(o)] if self.started else []
        if left:
            log.info("SIGTERM: draining %d sandboxes for at most %.0fs", len(left),
                     self.settings.drain_seconds)  # fmt: skip
        while left and loop.time() < deadline:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(1.0, deadline - loop.time()))
            left = [o for o in self.bound().values() if serving(o)]
        if left:
            log.warning("drain time over with %d sandboxes bound: stopping", len(left))
        for uid, obj in self.bound().items():
            if not serving(obj):
                await self._remove_quietly(uid)
        stop.set()

    async def _start_workers(self, stop: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(e.wait()) for e in (self.informer.synced, self.pump.ready)]
        stopper = asyncio.ensure_future(stop.wait())
        while not all(w.done() for w in waits):
            await asyncio.wait([*[w for w in waits if not w.done()], stopper],
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if stop.is_set():
                return
        stopper.cancel()
        self.started = True
        bound = self.bound()
        for uid, obj in bound.items():
            if uid not in self.workers:
                self._start_worker(obj)
        orphans = set(self.pump.known) - set(bound)
        for uid in orphans:
            log.info("removing runtime sandbox %s: no Sandbox is bound to this pod for it", uid)
            await self._remove_quietly(uid)
        log.info("sidecar ready: %d sandboxes, %d orphans removed", len(self.workers), len(orphans))


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(argv, os.environ)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    try:
        connection = connect(settings.kubeconfig)
    except ConfigError as exc:
        raise SystemExit(f"nest-sidecar: {exc}") from exc

    async def _main() -> None:
        stop, term = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        # File work (unpacking code) runs in threads: a pod hot-plugging sandboxes of many
        # different functions unpacks several at once.
        loop.set_default_executor(ThreadPoolExecutor(FILE_THREADS, thread_name_prefix="files"))

        def signalled() -> None:  # the first signal drains, a second one stops at once
            (stop if term.is_set() else term).set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, signalled)
        api = HttpApi(connection)
        runtime = RuntimeClient(settings.runtime_socket)
        sidecar = Sidecar(settings, api, runtime)
        drain = loop.create_task(sidecar.drain(term, stop), name="drain")
        try:
            await sidecar.run(stop)
        finally:
            drain.cancel()
            await runtime.close()
            await api.close()

    asyncio.run(_main())

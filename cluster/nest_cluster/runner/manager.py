"""The node's pod watch: the shared layer's informer on `spec.nodeName`, routed to pod workers.

Why the layer's `nest_kube.Informer` and not a loop of the runner's own (it had one, in a thread,
on the synchronous client): the same reflector rules as every other component - the first list
from the watch cache, the watch resumed from the last resourceVersion with bookmarks, a relist at
once on 410 Gone, back-off on failures - and above all a relist that reports only what changed
(`Store.replace`): after a broken watch or a compaction, pods whose resourceVersion is the same
are not touched, a pod changed meanwhile is posted its new version, a pod gone meanwhile is
stopped. A worker is never made twice for one pod, so running containers are never restarted by
the watch. The back-off is capped at 5 s rather than client-go's 30 s: the API server is local
and this is its one node, so a restarted API server sees its pods again within seconds.

The informer's handlers run on the runner's event loop and must not block: they only create a
worker (a thread, `PodWorker`), post to it or tell it its pod is gone. Workers are keyed by pod
uid, so a pod deleted and created again under the same name is a new worker. Once the first list
has been handled, the directories of pods that vanished while no runner ran are removed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from nest_cluster.runner.pods import Event, NodeContext, PodWorker
from nest_kube import ADDED, DELETED, MODIFIED, Api, Backoff, Delta, Informer
from nest_kube.resources import PODS

log = logging.getLogger(__name__)
Obj = Mapping[str, Any]


class Worker(Protocol):
    """What the manager needs of a pod worker (`PodWorker`; a stand-in in tests)."""

    def start(self) -> None: ...

    def post(self, event: Event) -> None: ...

    def join(self, timeout: float) -> None: ...


WorkerFactory = Callable[[NodeContext, Obj, Callable[[str], None]], Worker]


def node_selector(node: str) -> str:
    """The pods a node runs: those the scheduler bound to it."""
    return f"spec.nodeName={node}"


def _uid(obj: Obj) -> str:
    return str(obj["metadata"]["uid"])


class PodManager:
    """Routes the informer's deltas to per-pod workers, keyed by pod uid."""

    def __init__(self, ctx: NodeContext, make_worker: WorkerFactory = PodWorker) -> None:
        self.ctx = ctx
        self.make_worker = make_worker
        self.workers: dict[str, Worker] = {}
        self.lock = threading.Lock()  # workers end (`_done`) in their own threads

    def _done(self, uid: str) -> None:
        with self.lock:
            self.workers.pop(uid, None)

    def handle(self, delta: Delta) -> None:
        if delta.type == DELETED:
            self.forget(_uid(delta.obj))
            return
        if delta.type == MODIFIED and delta.old is not None and _uid(delta.old) != _uid(delta.obj):
            self.forget(_uid(delta.old))  # replaced under the same name
        if delta.type in (ADDED, MODIFIED):
            self.apply(delta.obj)

    def apply(self, pod: Obj) -> None:
        uid = _uid(pod)
        with self.lock:
            worker = self.workers.get(uid)
            if worker is None:
                try:
                    worker = self.make_worker(self.ctx, pod, self._done)
                except Exception:
                    log.exception("pod %s: cannot be run", pod["metadata"].get("name"))
                    return
                self.workers[uid] = worker
                worker.start()
                return
        worker.post(Event("pod", pod=pod))

    def forget(self, uid: str) -> None:
        with self.lock:
            worker = self.workers.get(uid)
        if worker is not None:
            worker.post(Event("gone"))

    def remove_leftovers(self, known: set[str]) -> list[str]:
        """Remove the directories of pods that are neither listed nor running; their uids."""
        removed = []
        with self.lock:
            running = set(self.workers)
        for pod_dir, meta in self.ctx.layout.pods():
            if meta.uid not in known and meta.uid not in running:
                pod_dir.remove()
                removed.append(meta.uid)
        return removed

    def shutdown(self, deadline: float) -> None:
        """Stop every worker's containers by `deadline` (epoch seconds); blocks: run it in a
        thread, since the workers may still need the loop for their API calls."""
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.post(Event("shutdown", at=deadline))
        for worker in workers:
            worker.join(max(0.0, deadline + 2.0 - time.time()))


class NodePods:
    """The pods bound to this node, watched by one informer and run by a `PodManager`."""

    def __init__(
        self,
        api: Api,
        ctx: NodeContext,
        *,
        make_worker: WorkerFactory = PodWorker,
        field_selector: str | None = None,  # tests: the fake serves no spec.nodeName selector
        backoff: Backoff | None = None,
    ) -> None:
        self.manager = PodManager(ctx, make_worker)
        selector = node_selector(ctx.node_name) if field_selector is None else field_selector
        self.informer = Informer(
            api, PODS, field_selector=selector, backoff=backoff or Backoff(initial=0.5, cap=5.0)
        )
        self.informer.add_handler(self.manager.handle)
        self._cleanup: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.informer.start()
        self._cleanup = asyncio.create_task(self._after_first_list(), name="pod leftovers")

    async def _after_first_list(self) -> None:
        await self.informer.synced.wait()
        known = {_uid(pod) for pod in self.informer.store.list()}
        removed = self.manager.remove_leftovers(known)
        if removed:
            log.info("removed the files of %d pod(s) gone while no runner ran", len(removed))

    async def stop(self, deadline: float) -> None:
        """Stop watching, then stop every pod's containers by `deadline`."""
        if self._cleanup is not None:
            self._cleanup.cancel()
            await asyncio.gather(self._cleanup, return_exceptions=True)
        await self.informer.stop()
        await asyncio.to_thread(self.manager.shutdown, deadline)

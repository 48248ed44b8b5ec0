"""One server-side-filtered list+watch of the Sandboxes bound to this pod, kept in sync.

Like the kubelet's pod config source, this is the sidecar's only view of desired state: one watch
on `nest.sandbox.dev/pod-uid=<own uid>` across namespaces, so the API server does the filtering and
a pool pod never sees another pod's sandboxes. Watches end (timeouts, API server restarts): it
resumes from the last resourceVersion (bookmarks keep that fresh), relists on 410 Gone, and after
every relist reports objects that vanished meanwhile as deletions, so nothing is missed.

The kubernetes client is synchronous, so the loop runs in a thread and hands events to asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from crds.constants import GROUP, SANDBOX_PLURAL, VERSION

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """A change to one Sandbox: ADDED, MODIFIED or DELETED, with the object."""

    type: str
    obj: dict[str, Any]

    @property
    def uid(self) -> str:
        return str(self.obj["metadata"]["uid"])


class SandboxInformer:
    """Runs list+watch in a thread; `events` is an asyncio queue; `synced` is set after a list."""

    def __init__(
        self,
        api: client.ApiClient,
        label_selector: str,
        loop: asyncio.AbstractEventLoop,
        watch_timeout: int = 300,
        retry_delay: float = 1.0,
    ) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.selector = label_selector
        self.loop = loop
        self.watch_timeout = watch_timeout
        self.retry_delay = retry_delay
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.synced = asyncio.Event()
        self.known: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name="sandbox-informer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def _emit(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def _list(self) -> str:
        result = cast(
            dict[str, Any],
            self.custom.list_cluster_custom_object(
                GROUP, VERSION, SANDBOX_PLURAL, label_selector=self.selector
            ),
        )
        current = {str(o["metadata"]["uid"]): o for o in result.get("items", [])}
        for uid, obj in list(self.known.items()):
            if uid not in current:
                self._emit(Event("DELETED", obj))
        for uid, obj in current.items():
            self._emit(Event("MODIFIED" if uid in self.known else "ADDED", obj))
        self.known = current
        self.loop.call_soon_threadsafe(self.synced.set)
        return str(result["metadata"]["resourceVersion"])

    def _run(self) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch_from(version)
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch expired (410 Gone); relisting")
                    version = None
                    continue
                log.warning("sandbox watch failed: %s %s; retrying", exc.status, exc.reason)
                self._stop.wait(self.retry_delay)
            except Exception as exc:  # the API server restarting, connection resets
                log.warning("sandbox watch interrupted: %s; retrying", exc)
                self._stop.wait(self.retry_delay)

    def _watch_from(self, version: str) -> str:
        self._watch = watch.Watch()
        stream = self._watch.stream(
            self.custom.list_cluster_custom_object,
            GROUP,
            VERSION,
            SANDBOX_PLURAL,
            label_selector=self.selector,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
        )
        raw: dict[str, Any]
        for raw in stream:
            if self._stop.is_set():
                break
            kind: str = raw["type"]
            obj: dict[str, Any] = raw["object"]
            if kind == "ERROR":
                raise ApiException(status=obj.get("code", 500), reason=obj.get("message"))
            version = str(obj["metadata"]["resourceVersion"])
            if kind == "BOOKMARK":
                continue
            uid = str(obj["metadata"]["uid"])
            if kind == "DELETED":
                self.known.pop(uid, None)
            else:
                self.known[uid] = obj
            self._emit(Event(kind, obj))
        return version


def on_events(informer: SandboxInformer, handle: Callable[[Event], None]) -> asyncio.Task[None]:
    """Drain the informer's queue into `handle` on the event loop."""

    async def drain() -> None:
        while True:
            event = await informer.events.get()
            try:
                handle(event)
            except Exception:  # one bad event must not stop every later one from arriving
                log.exception("handling %s of sandbox %s failed", event.type, event.uid)

    return asyncio.create_task(drain(), name="sandbox-events")

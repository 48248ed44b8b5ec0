"""One informer for every component: list, then watch from the list's resourceVersion, forever.

Nest had four list+watch loops (the sidecar's, the gateway's two, the runner's), each in a
thread with its own retry rules; this one replaces them (the gateway's and the sidecar's so
far), following client-go's reflector:

- The first list asks for resourceVersion "0" (served from the API server's watch cache, not
  etcd); the watch then resumes from the last version seen, with bookmarks (allowWatchBookmarks)
  keeping that version fresh while nothing changes, and a server-side timeout drawn from
  [timeout, 2*timeout) so many watchers do not all reconnect at once.
- 410 Gone (the version was compacted away): relist at once, from the last version seen; if
  even that is gone, from "" (a consistent read). The relist reports what changed meanwhile as
  adds, updates and deletes (`Store.replace`), so nothing is missed and nothing is repeated.
- Other failures back off exponentially (0.8 s doubling to 30 s, jittered, reset after two
  quiet minutes) and then resume the watch where it was: no answer, 429, 5xx and auth failures
  (a rotated token) keep the version; a 4xx that says the request itself is wrong relists.
- A watch that ends cleanly is resumed at once, unless it ended within a second having
  delivered nothing (a proxy closing it): that backs off, or the loop would spin.

`synced` is set once the first list has been handed to the handlers (client-go's HasSynced).
`healthy_since` says since when (the informer's clock, monotonic) the list+watch has worked: set
by a list that answered, or by opening a watch, after a failure (or at the first list); None
from a failure of either (a 410 is no failure: history was compacted, the server answers) until
the next attempt, and while stopped. Consumers that judge others by what the watch shows (a
Lease not renewed) wait a while after it: what nobody could write while it failed is no news.
A watch counts from when it is opened, not from its first event (the API sends nothing until
there is news, and a quiet watch is a healthy one); a request that hangs instead of failing is
not seen here.
`stop()` keeps the store and the version: `start()` again resumes the watch from there (a 410
then relists), so a paused informer reports what it missed as deltas, not as a fresh list.
Handlers are plain callables run on the loop, in order; one that raises is logged and the
others still run. The decisions (`next_step`, `Backoff`, `list_version`) are pure functions.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from nest_kube.api import (
    ADDED,
    BOOKMARK,
    DELETED,
    MODIFIED,
    Api,
    ApiError,
    Unreachable,
    is_expired,
    is_too_large_version,
)
from nest_kube.resources import Obj, Resource, resource_version
from nest_kube.store import Delta, IndexFunc, Store

log = logging.getLogger(__name__)
Handler = Callable[[Delta], None]
SHORT_WATCH_SECONDS = 1.0


@dataclass(frozen=True)
class Next:
    """What the loop does after a list or a watch ends: list again or watch, pause or not."""

    relist: bool
    backoff: bool
    consistent: bool = False  # relist with resourceVersion "" (the last one is gone too)


def next_step(error: ApiError | None, *, listing: bool, short: bool = False) -> Next:
    """The reflector's decision after a list (`listing`) or a watch ended with `error`."""
    if error is None:
        return Next(relist=False, backoff=short)
    if listing:
        if is_expired(error) or is_too_large_version(error):
            return Next(relist=True, backoff=False, consistent=True)
        return Next(relist=True, backoff=True)
    if is_expired(error):
        return Next(relist=True, backoff=False)
    if isinstance(error, Unreachable) or error.status in (401, 403, 429) or error.status >= 500:
        return Next(relist=False, backoff=True)
    return Next(relist=True, backoff=True)


def list_version(last: str | None, consistent: bool) -> str:
    """resourceVersion for a (re)list: "0" first (watch cache), "" when the last is gone."""
    if consistent:
        return ""
    return last or "0"


class Backoff:
    """client-go's exponential backoff manager: doubles up to `cap`, jittered, reset when quiet."""

    def __init__(
        self,
        initial: float = 0.8,
        cap: float = 30.0,
        reset_after: float = 120.0,
        jitter: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial, self.cap, self.reset_after, self.jitter = initial, cap, reset_after, jitter
        self.clock, self.rand = clock, rand
        self._base = 0.0
        self._last: float | None = None

    def next(self) -> float:
        """Seconds to wait now; also records that a pause started."""
        now = self.clock()
        if self._last is None or now - self._last > self.reset_after:
            self._base = self.initial
        else:
            self._base = min(self._base * 2, self.cap)
        self._last = now
        return self._base * (1 + self.jitter * self.rand())


def handler_funcs(
    on_add: Callable[[Obj], None] | None = None,
    on_update: Callable[[Obj, Obj], None] | None = None,
    on_delete: Callable[[Obj], None] | None = None,
) -> Handler:
    """client-go's ResourceEventHandlerFuncs: one callable per kind of delta (update: old, new)."""

    def handle(delta: Delta) -> None:
        if delta.type == ADDED and on_add is not None:
            on_add(delta.obj)
        elif delta.type == MODIFIED and on_update is not None:
            on_update(delta.old or delta.obj, delta.obj)
        elif delta.type == DELETED and on_delete is not None:
            on_delete(delta.obj)

    return handle


class Informer:
    """A list+watch of one resource (a namespace or all, optionally filtered) into a Store."""

    def __init__(
        self,
        api: Api,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        indexers: Mapping[str, IndexFunc] | None = None,
        watch_timeout: int = 300,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout = watch_timeout
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.store = Store(indexers)
        self.synced = asyncio.Event()
        self.resource_version: str | None = None  # the last one seen: where a watch resumes
        self.lists = 0  # lists done, the first one included (a relist is any after it)
        self.healthy_since: float | None = None  # see the module's docstring
        self._handlers: list[Handler] = []
        self._task: asyncio.Task[None] | None = None
        self._what = f"{resource}" + (f" in {namespace}" if namespace else "")

    def add_handler(self, handler: Handler) -> None:
        """Run `handler` on every delta; one added after the first list is sent the store."""
        self._handlers.append(handler)
        if self.synced.is_set():
            for obj in self.store.list():
                self._call(handler, Delta("ADDED", obj))

    def _call(self, handler: Handler, delta: Delta) -> None:
        try:
            handler(delta)
        except Exception:  # one bad handler must not starve the others or stop the watch
            log.exception("%s handler failed on %s of %s", self._what, delta.type, delta.key)

    def _dispatch(self, delta: Delta | None) -> None:
        if delta is not None:
            for handler in self._handlers:
                self._call(handler, delta)

    # -- the loop ------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"informer {self._what}")
        return self._task

    async def stop(self) -> None:
        """Stop listing and watching; the store stays, and `start` resumes from where it was."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.healthy_since = None

    async def run(self) -> None:
        # Resumed (stopped, started again): watch from the last version; a 410 relists.
        step = Next(relist=self.resource_version is None, backoff=False)
        while True:
            if step.backoff:
                await asyncio.sleep(self.backoff.next())
            if step.relist:
                step = await self._list(step.consistent)
                if step.relist:
                    continue
            step = await self._watch_once()

    async def _list(self, consistent: bool) -> Next:
        version = list_version(self.resource_version, consistent)
        try:
            listed = await self.api.list(
                self.resource, self.namespace, label_selector=self.label_selector,
                field_selector=self.field_selector, resource_version=version,
            )  # fmt: skip
        except ApiError as exc:
            log.warning("listing %s failed: %s", self._what, exc)
            self._failed(exc)
            return next_step(exc, listing=True)
        except Exception:  # a bug, or a list the server garbled: try again after a pause
            log.exception("listing %s failed", self._what)
            self._failed(None)
            return Next(relist=True, backoff=True)
        self._healthy()
        for delta in self.store.replace(listed.get("items") or []):
            self._dispatch(delta)
        self.resource_version = str((listed.get("metadata") or {}).get("resourceVersion") or "")
        self.lists += 1
        self.synced.set()
        return Next(relist=False, backoff=False)

    async def _watch_once(self) -> Next:
        assert self.resource_version is not None
        started, delivered = self.clock(), 0
        error: ApiError | None = None
        timeout = int(self.watch_timeout * (1 + random.random()))
        self._healthy()
        try:
            async for event in self.api.watch(
                self.resource, self.namespace, resource_version=self.resource_version,
                label_selector=self.label_selector, field_selector=self.field_selector,
                timeout_seconds=timeout,
            ):  # fmt: skip
                delivered += 1
                version = resource_version(event.object)
                if event.type != BOOKMARK:
                    self._dispatch(self.store.apply(event.type, event.object))
                if version:
                    self.resource_version = version
        except ApiError as exc:
            error = exc
            level = logging.INFO if is_expired(exc) else logging.WARNING
            log.log(level, "watch of %s ended: %s", self._what, exc)
            self._failed(exc)
        except Exception:  # a bug, or an object without metadata: start over from a list
            log.exception("watch of %s failed", self._what)
            self._failed(None)
            return Next(relist=True, backoff=True)
        short = delivered == 0 and self.clock() - started < SHORT_WATCH_SECONDS
        return next_step(error, listing=False, short=short and error is None)

    def _healthy(self) -> None:
        if self.healthy_since is None:
            self.healthy_since = self.clock()

    def _failed(self, error: ApiError | None) -> None:
        if error is None or not is_expired(error):
            self.healthy_since = None

    def get(self, namespace: str | None, name: str) -> Obj | None:
        return self.store.get_by(namespace, name)

"""The sidecar's calls to the API server: the finalizer's release, status, Events, ConfigMap and
Secret reads.

A thin I/O shell over the shared layer (`nest_kube.Api`: `HttpApi` on the sidecar's own event
loop, no threads; `FakeApi` in unit tests), so the rules below are tested without a server:

- The finalizer is only released here (the binder adds it, in the binding write): a JSON patch
  guarded by a `test` op, so a concurrent edit of the list fails (409/422) instead of being
  overwritten, and is retried on a fresh read. A Sandbox already gone (404) needs nothing more.
- Calls that find no server (unreachable, 429, 5xx) are retried with the layer's exponential
  back-off (0.8 s doubling to 30 s) for as long as the caller waits: a worker releasing its
  finalizer waits out an outage (only shutdown cancels it) and is never crashed by one.
- Events go through `nest_kube.EventRecorder`: the caller never waits, repeats are counted on
  one Event (client-go's correlator), and a failed Event is dropped, never raised.
- Pull Secrets are read one by one, by name (the sidecar may never list them).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, TypeVar

from crds.constants import API_VERSION, SANDBOX_KIND, SIDECAR_FINALIZER
from nest_kube import JSON_PATCH, MERGE_PATCH, Api, ApiError, Backoff, EventRecorder
from nest_kube.api import is_transient
from nest_kube.resources import CONFIGMAPS, SANDBOXES, SECRETS, Obj
from nest_sidecar.packages import SecretData
from nest_sidecar.status import brief

log = logging.getLogger(__name__)
T = TypeVar("T")
EDIT_ATTEMPTS = 5  # fresh reads before a finalizer edit that keeps losing races gives up


def _where(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return str(meta["namespace"]), str(meta["name"])


def remove_finalizer_patch(finalizers: list[str]) -> list[dict[str, Any]] | None:
    """The JSON patch removing ours, guarded so that a list changed meanwhile refuses it."""
    if SIDECAR_FINALIZER not in finalizers:
        return None
    path = f"/metadata/finalizers/{finalizers.index(SIDECAR_FINALIZER)}"
    return [
        {"op": "test", "path": path, "value": SIDECAR_FINALIZER},
        {"op": "remove", "path": path},
    ]


class KubeShell:
    """The API calls of one sidecar; its Events come from `recorder`."""

    def __init__(
        self,
        api: Api,
        recorder: EventRecorder,
        *,
        backoff: Callable[[], Backoff] = Backoff,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.api = api
        self.recorder = recorder
        self._backoff = backoff
        self._sleep = sleep
        self.retries = 0  # transient failures waited out (what the tests and logs read)

    async def _patiently(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, again after a back-off for as long as the API server is away or failing."""
        backoff: Backoff | None = None
        while True:
            try:
                return await call()
            except ApiError as exc:
                if not is_transient(exc):
                    raise
                backoff = backoff or self._backoff()
                delay = backoff.next()
                self.retries += 1
                log.warning("%s: %s; retrying in %.1fs", what, exc, delay)
                await self._sleep(delay)

    # -- finalizers ----------------------------------------------------------------------------

    async def release_finalizer(self, obj: Mapping[str, Any]) -> None:
        """Remove our finalizer from the latest version of the object, re-reading it after a
        lost race; gone is fine."""
        namespace, name = _where(obj)
        latest: Mapping[str, Any] = obj
        for _ in range(EDIT_ATTEMPTS):
            patch = remove_finalizer_patch(list(latest["metadata"].get("finalizers") or []))
            if patch is None:
                return
            try:
                call = partial(
                    self.api.patch, SANDBOXES, namespace, name, patch, content_type=JSON_PATCH
                )
                await self._patiently(f"releasing the finalizer of {namespace}/{name}", call)
                return
            except ApiError as exc:
                if exc.status == 404:
                    return  # gone: nothing left to guard
                if exc.status not in (409, 422):  # 422: the test op lost a race; read again
                    raise
            try:
                read = partial(self.api.get, SANDBOXES, namespace, name)
                latest = await self._patiently(f"reading {namespace}/{name}", read)
            except ApiError as exc:
                if exc.status == 404:
                    return
                raise
        log.warning("releasing the finalizer of %s/%s: lost %d races; giving up", namespace,
                    name, EDIT_ATTEMPTS)  # fmt: skip

    # -- status --------------------------------------------------------------------------------

    async def patch_status(self, obj: Mapping[str, Any], patch: Mapping[str, Any]) -> Obj | None:
        """Merge-patch the status subresource: the object as stored, None when it is gone.

        One attempt: the status manager keeps the report and retries it with its own back-off,
        so a later report can replace it meanwhile."""
        namespace, name = _where(obj)
        try:
            return await self.api.patch(
                SANDBOXES, namespace, name, dict(patch), content_type=MERGE_PATCH,
                subresource="status",
            )  # fmt: skip
        except ApiError as exc:
            if exc.status == 404:  # deleted meanwhile: nothing left to report on
                return None
            raise

    async def get_sandbox(self, obj: Mapping[str, Any]) -> Obj | None:
        """The Sandbox as the API server has it now (a read past the informer), None if gone."""
        namespace, name = _where(obj)
        try:
            return await self.api.get(SANDBOXES, namespace, name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    # -- events --------------------------------------------------------------------------------

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Record an Event for `kubectl describe`, without making the caller wait for it; on
        `obj`, a Sandbox as the informer lists it (without kind), or an object naming its kind
        (its controller, `nest_kube.on_controller`)."""
        typed = bool(obj.get("kind"))
        self.recorder.event(
            obj, type_, reason, brief(message),
            kind=None if typed else SANDBOX_KIND, api_version=None if typed else API_VERSION,
        )  # fmt: skip

    # -- reads ---------------------------------------------------------------------------------

    async def read_configmap(self, namespace: str, name: str) -> Mapping[str, str] | None:
        try:
            cm = await self.api.get(CONFIGMAPS, namespace, name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return dict(cm.get("data") or {})

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        """One Secret by name (None when it does not exist); PermissionError when RBAC says no,
        so the message can say which grant is missing."""
        try:
            secret = await self.api.get(SECRETS, namespace, name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise PermissionError(f"forbidden: get secrets {namespace}/{name}") from exc
            raise
        data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
        return SecretData(str(secret.get("type") or ""), data)

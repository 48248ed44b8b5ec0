"""The sidecar's writes to the API server (finalizers, status, Events), its ConfigMap reads and
its reads of the pull Secrets that function packages name (one Secret by name, never a list).

This is the thin I/O shell: every call here is a plain kubernetes-client call run in a thread,
so the asyncio workers stay responsive. Finalizers are edited with JSON patches guarded by a
`test` op, so a concurrent edit of the list fails instead of being overwritten.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from crds.constants import (
    API_VERSION,
    GROUP,
    SANDBOX_KIND,
    SANDBOX_PLURAL,
    SIDECAR_FINALIZER,
    VERSION,
)
from nest_sidecar.packages import SecretData
from nest_sidecar.status import brief

log = logging.getLogger(__name__)
EVENT_THREADS = 4


class KubeShell:
    """API calls of one sidecar, identified in Events as `nest-sidecar/<pod>`."""

    def __init__(self, api: client.ApiClient, pod_name: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.pod_name = pod_name
        self.host = socket.gethostname()
        # Events get threads of their own: they must never queue ahead of a status write.
        self._events = ThreadPoolExecutor(EVENT_THREADS, thread_name_prefix="events")

    # -- finalizers ----------------------------------------------------------------------------

    def _json_patch(self, obj: Mapping[str, Any], patch: list[dict[str, Any]]) -> None:
        meta = obj["metadata"]
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, meta["namespace"], SANDBOX_PLURAL, meta["name"], patch,
            _content_type="application/json-patch+json",
        )  # fmt: skip

    async def ensure_finalizer(self, obj: Mapping[str, Any]) -> None:
        finalizers = list(obj["metadata"].get("finalizers") or [])
        if SIDECAR_FINALIZER in finalizers:
            return
        patch: list[dict[str, Any]]
        if finalizers:
            patch = [{"op": "add", "path": "/metadata/finalizers/-", "value": SIDECAR_FINALIZER}]
        else:
            patch = [{"op": "add", "path": "/metadata/finalizers", "value": [SIDECAR_FINALIZER]}]
        await asyncio.to_thread(self._json_patch, obj, patch)

    async def release_finalizer(self, obj: Mapping[str, Any]) -> None:
        """Remove our finalizer from the latest version of the object; gone is fine."""
        meta = obj["metadata"]
        for _ in range(5):
            try:
                latest: Any = await asyncio.to_thread(
                    self.custom.get_namespaced_custom_object,
                    GROUP, VERSION, meta["namespace"], SANDBOX_PLURAL, meta["name"],
                )  # fmt: skip
                finalizers = list(latest["metadata"].get("finalizers") or [])
                if SIDECAR_FINALIZER not in finalizers:
                    return
                index = finalizers.index(SIDECAR_FINALIZER)
                path = f"/metadata/finalizers/{index}"
                patch = [
                    {"op": "test", "path": path, "value": SIDECAR_FINALIZER},
                    {"op": "remove", "path": path},
                ]
                await asyncio.to_thread(self._json_patch, latest, patch)
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status not in (409, 422):  # 422: the test op lost a race; read again
                    raise

    # -- status --------------------------------------------------------------------------------

    async def patch_status(self, obj: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        try:
            await asyncio.to_thread(
                self.custom.patch_namespaced_custom_object_status,
                GROUP, VERSION, meta["namespace"], SANDBOX_PLURAL, meta["name"], dict(patch),
                _content_type="application/merge-patch+json",
            )  # fmt: skip
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing left to report on
                raise

    # -- events --------------------------------------------------------------------------------

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Record an Event for `kubectl describe`, without making the caller wait for it."""
        asyncio.get_running_loop().run_in_executor(
            self._events, self._create_event, obj, type_, reason, message
        )

    def _create_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        now = datetime.now(UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                generate_name=f"{meta['name']}.", namespace=meta["namespace"]
            ),
            involved_object=client.V1ObjectReference(
                api_version=API_VERSION,
                kind=SANDBOX_KIND,
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta["uid"],
                resource_version=meta.get("resourceVersion"),
            ),
            reason=reason,
            message=brief(message),
            type=type_,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component="nest-sidecar", host=self.pod_name),
            reporting_component="nest.sandbox.dev/sidecar",
            reporting_instance=self.pod_name,
        )
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as exc:
            log.debug("event %s for %s not recorded: %s", reason, meta["name"], exc.reason)

    # -- reads ---------------------------------------------------------------------------------

    async def read_configmap(self, namespace: str, name: str) -> Mapping[str, str] | None:
        try:
            cm = await asyncio.to_thread(self.core.read_namespaced_config_map, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(cm.data or {})

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        """One Secret by name (None when it does not exist); PermissionError when RBAC says no,
        so the message can say which grant is missing."""
        try:
            secret = await asyncio.to_thread(self.core.read_namespaced_secret, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise PermissionError(f"forbidden: get secrets {namespace}/{name}") from exc
            raise
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        return SecretData(str(secret.type or ""), data)

"""The gateway's calls to the API server, and the watches that feed its routing state.

Thin I/O shell: the kubernetes client is synchronous, so each call runs in a thread and every
ApiException becomes one of the gateway's typed errors (the API server's own message and field
causes kept, so a problem names what the cluster rejected). Two cluster-wide list+watch loops
(SandboxDeployments, SandboxEndpoints) run in threads and hand events to the event loop; they
resume from the last resourceVersion and relist on 410 Gone, reporting vanished objects as
deletions, so the routing table never keeps an address the cluster has dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import Any, cast

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from crds.constants import (
    DEPLOYMENT_PLURAL,
    ENDPOINTS_PLURAL,
    GROUP,
    REPLICASET_PLURAL,
    SANDBOX_PLURAL,
    VERSION,
)
from gateway.errors import (
    BadRequest,
    Conflict,
    FieldError,
    Forbidden,
    GatewayError,
    InvalidInput,
    NotFound,
    Upstream,
)

log = logging.getLogger(__name__)
Obj = dict[str, Any]


def api_error(exc: ApiException, what: str) -> GatewayError:
    """The gateway error for an API server failure on `what` (e.g. "function ns/name")."""
    try:
        status = json.loads(exc.body or "{}")
    except ValueError:
        status = {}
    message = str(status.get("message") or exc.reason or "no message")
    causes = [
        FieldError(str(c.get("field", "")), str(c.get("message", "")))
        for c in (status.get("details") or {}).get("causes") or []
    ]
    if exc.status == 404:
        return NotFound(f"{what} not found")
    if exc.status == 409:
        return Conflict(f"{what}: {message}")
    if exc.status == 422:
        return InvalidInput(f"{what} rejected by the API server: {message}", causes)
    if exc.status == 400:
        return BadRequest(f"{what}: {message}")
    if exc.status == 403 and message.startswith("admission webhook"):
        # An admission webhook (SandboxRestriction) refused the object itself, naming the
        # field: the caller's to fix, not the gateway's credentials.
        return Forbidden(f"{what}: {message}")
    # Other 401/403 here are the gateway's own credentials failing: the caller cannot fix that.
    return Upstream(f"API server answered {exc.status} for {what}: {message}")


class Kube:
    """Typed async wrappers of the API calls the gateway makes with its own identity."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.auth = client.AuthenticationV1Api(api)
        self.authz = client.AuthorizationV1Api(api)

    async def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except ApiException as exc:
            raise api_error(exc, what) from exc
        except OSError as exc:  # connection refused/reset: the API server is away
            raise Upstream(f"API server unreachable for {what}: {exc}") from exc

    async def _get(self, plural: str, ns: str, name: str, what: str) -> Obj:
        fn = self.custom.get_namespaced_custom_object
        return cast(Obj, await self._call(what, fn, GROUP, VERSION, ns, plural, name))

    async def _list(self, plural: str, ns: str, what: str, selector: str = "") -> list[Obj]:
        fn = self.custom.list_namespaced_custom_object
        found = await self._call(what, fn, GROUP, VERSION, ns, plural, label_selector=selector)
        return cast(list[Obj], found.get("items", []))

    async def get_deployment(self, ns: str, name: str) -> Obj:
        return await self._get(DEPLOYMENT_PLURAL, ns, name, f"function {ns}/{name}")

    async def list_deployments(self, ns: str) -> list[Obj]:
        return await self._list(DEPLOYMENT_PLURAL, ns, f"functions of {ns}")

    async def create_deployment(self, ns: str, body: Obj) -> Obj:
        fn = self.custom.create_namespaced_custom_object
        name = body["metadata"]["name"]
        what = f"function {ns}/{name}"
        return cast(Obj, await self._call(what, fn, GROUP, VERSION, ns, DEPLOYMENT_PLURAL, body))

    async def replace_deployment(self, ns: str, name: str, body: Obj) -> Obj:
        fn = self.custom.replace_namespaced_custom_object
        what = f"function {ns}/{name}"
        args = (GROUP, VERSION, ns, DEPLOYMENT_PLURAL, name, body)
        return cast(Obj, await self._call(what, fn, *args))

    async def delete_deployment(self, ns: str, name: str) -> None:
        fn = self.custom.delete_namespaced_custom_object
        what = f"function {ns}/{name}"
        await self._call(
            what, fn, GROUP, VERSION, ns, DEPLOYMENT_PLURAL, name,
            propagation_policy="Background",
        )  # fmt: skip

    async def get_scale(self, ns: str, name: str) -> Obj:
        fn = self.custom.get_namespaced_custom_object_scale
        what = f"function {ns}/{name}"
        return cast(Obj, await self._call(what, fn, GROUP, VERSION, ns, DEPLOYMENT_PLURAL, name))

    async def patch_scale(
        self, ns: str, name: str, replicas: int, resource_version: str | None = None
    ) -> Obj:
        """Merge-patch the scale subresource; with `resource_version` it is a precondition."""
        body: Obj = {"spec": {"replicas": replicas}}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        fn = self.custom.patch_namespaced_custom_object_scale
        what = f"scale of function {ns}/{name}"
        args = (GROUP, VERSION, ns, DEPLOYMENT_PLURAL, name, body)
        return cast(Obj, await self._call(what, fn, *args))

    async def get_endpoints(self, ns: str, name: str) -> Obj | None:
        try:
            return await self._get(ENDPOINTS_PLURAL, ns, name, f"endpoints {ns}/{name}")
        except NotFound:
            return None

    async def list_endpoints(self, ns: str) -> list[Obj]:
        return await self._list(ENDPOINTS_PLURAL, ns, f"endpoints of {ns}")

    async def list_replicasets(self, ns: str, selector: str) -> list[Obj]:
        return await self._list(REPLICASET_PLURAL, ns, f"revisions in {ns}", selector)

    async def list_sandboxes(self, ns: str, selector: str) -> list[Obj]:
        return await self._list(SANDBOX_PLURAL, ns, f"sandboxes in {ns}", selector)

    async def token_review(self, token: str) -> Obj:
        body: Obj = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"}
        body["spec"] = {"token": token}
        fn = self.auth.create_token_review
        result = await self._call("token review", fn, body)
        return cast(Obj, self.api.sanitize_for_serialization(result))

    async def access_review(self, spec: Obj) -> Obj:
        body: Obj = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview"}
        body["spec"] = spec
        fn = self.authz.create_subject_access_review
        result = await self._call("access review", fn, body)
        return cast(Obj, self.api.sanitize_for_serialization(result))


class Informer:
    """A cluster-wide list+watch of one plural in a thread; `handle(type, obj)` on the loop."""

    def __init__(
        self,
        api: client.ApiClient,
        plural: str,
        loop: asyncio.AbstractEventLoop,
        handle: Callable[[str, Obj], None],
        watch_timeout: int = 300,
    ) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.plural = plural
        self.loop = loop
        self.handle = handle
        self.watch_timeout = watch_timeout
        self.synced = asyncio.Event()
        self._known: dict[str, Obj] = {}
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{plural}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def _emit(self, kind: str, obj: Obj) -> None:
        self.loop.call_soon_threadsafe(self.handle, kind, obj)

    def _list(self) -> str:
        listed = cast(Obj, self.custom.list_cluster_custom_object(GROUP, VERSION, self.plural))
        current = {str(o["metadata"]["uid"]): o for o in listed.get("items", [])}
        for uid, obj in self._known.items():
            if uid not in current:
                self._emit("DELETED", obj)
        for obj in current.values():
            self._emit("MODIFIED", obj)
        self._known = current
        self.loop.call_soon_threadsafe(self.synced.set)
        return str(listed["metadata"]["resourceVersion"])

    def _run(self) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch_from(version)
            except ApiException as exc:
                if exc.status == 410:
                    version = None
                    continue
                log.warning("%s watch failed: %s %s", self.plural, exc.status, exc.reason)
                self._stop.wait(1.0)
            except Exception as exc:  # API server restarting, connection reset
                log.warning("%s watch interrupted: %s", self.plural, exc)
                self._stop.wait(1.0)

    def _watch_from(self, version: str) -> str:
        self._watch = watch.Watch()
        stream = self._watch.stream(
            self.custom.list_cluster_custom_object, GROUP, VERSION, self.plural,
            resource_version=version, allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
        )  # fmt: skip
        raw: Obj
        for raw in stream:
            if self._stop.is_set():
                break
            kind, obj = raw["type"], raw["object"]
            if kind == "ERROR":
                raise ApiException(status=obj.get("code", 500), reason=obj.get("message"))
            version = str(obj["metadata"]["resourceVersion"])
            if kind == "BOOKMARK":
                continue
            uid = str(obj["metadata"]["uid"])
            if kind == "DELETED":
                self._known.pop(uid, None)
            else:
                self._known[uid] = obj
            self._emit(kind, obj)
        return version

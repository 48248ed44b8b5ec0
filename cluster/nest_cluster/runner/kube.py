"""What the runner's pod workers ask of the API server, and how a thread asks the event loop.

Why a bridge: the runner is built of threads that block - one worker per pod waiting on its queue
and timers, a waiter per process, the probers - and they stay threads, because a container's life
is blocking calls (starting the shim, waitpid, file work in its directories). Its API traffic
needs no threads: the pod watch (`nest_kube.Informer`), the node heartbeat and the reads and
writes of every worker run on the runner's one asyncio loop over one `nest_kube.HttpApi`. A
worker hands its coroutine to that loop (`RunnerKube.call`) and waits for the answer, as the
kubelet's pod workers share one client. Nothing on the loop may call back into a worker's
blocking API (it would wait for itself), which `call` refuses.

The writes, as the kubelet makes them:
- status (`write_status`): a merge patch of the status subresource that carries the pod's uid, the
  kubelet's precondition, so a pod deleted and created again under the same name is never given
  the old one's status (1.20 refuses another uid with 422 "field is immutable"). A 409 or 422 is
  checked with a GET: gone or another uid means the pod is gone for this worker; the same uid
  and a 409 is retried at once (a few times). Anything else is FAILED, and the worker tries
  again after a back-off: an API server that restarts costs a late status, never the pod's
  processes.
- the final deletion (`finish_deletion`): DELETE with grace 0 and a uid precondition once every
  container has stopped, 404 and 409 meaning it is gone already; and TokenRequests for projected
  tokens (`request_token`). These two stay on the kubernetes library's synchronous client of the
  same `Connection`, in the worker's thread, because the layer's `Api` cannot say them:
  `Api.delete` has no grace period (and a pod that is already terminating ignores a DELETE
  without one), `Api.create` no subresource (`serviceaccounts/NAME/token`).

`PodAPI` is one worker's view: the ConfigMaps and Secrets its volumes and env read (a missing
one is None, any other failure the layer's `ApiError`) and the tokens of its projected
`serviceAccountToken` volumes. Those are bound to the Pod (`boundObjectRef`), as the kubelet asks
for them: the token then carries the pod's name and uid (a TokenReview shows them as the user's
`authentication.kubernetes.io/pod-name` and `pod-uid` extras) and stops working once the pod is
gone. The runner may do this as the cluster admin (nest_cluster/pki.py); a real kubelet may
through the Node authorizer, for pods bound to its node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from enum import Enum
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from nest_cluster.errors import RunnerError
from nest_cluster.runner import volumes
from nest_cluster.runner.state import parse_time
from nest_kube import Api, ApiError, Unreachable
from nest_kube.resources import CONFIGMAPS, PODS, SECRETS, Resource

log = logging.getLogger(__name__)
T = TypeVar("T")
Obj = Mapping[str, Any]
CONFLICT_ATTEMPTS = 3  # status patches answered 409 for the same pod before giving up for now
DELETE_ATTEMPTS = 3
CALL_GRACE = 10.0  # seconds beyond the client's own timeout before a loop call counts as lost


class Written(Enum):
    """What became of a status write."""

    WRITTEN = "written"
    GONE = "gone"  # deleted, or a new pod under the same name: stop publishing
    FAILED = "failed"  # not now (unreachable, throttled, refused): try again later


def status_patch(pod: Obj, status: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch of a status write, with the uid as the kubelet's precondition."""
    return {"metadata": {"uid": pod["metadata"]["uid"]}, "status": dict(status)}


def _uid(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


async def still_ours(api: Api, pod: Obj) -> bool | None:
    """Whether the pod named like `pod` is still the same pod: None if that cannot be told."""
    meta = pod["metadata"]
    try:
        current = await api.get(PODS, meta["namespace"], meta["name"])
    except ApiError as err:
        return False if err.status == 404 else None
    return _uid(current) == _uid(pod)


async def write_status(api: Api, pod: Obj, status: Mapping[str, Any]) -> Written:
    """Patch `status` into the pod's status subresource (see the module docstring)."""
    meta = pod["metadata"]
    name = f"{meta['namespace']}/{meta['name']}"
    for _ in range(CONFLICT_ATTEMPTS):
        try:
            await api.patch(PODS, meta["namespace"], meta["name"], status_patch(pod, status),
                            subresource="status")  # fmt: skip
            return Written.WRITTEN
        except ApiError as err:
            if err.status == 404:
                return Written.GONE
            if err.status not in (409, 422):
                log.warning("pod %s: status not written (%s); trying again later", name, err)
                return Written.FAILED
            ours = await still_ours(api, pod)
            if ours is False:
                return Written.GONE
            if ours is None or err.status == 422:
                log.warning("pod %s: status refused (%s)", name, err)
                return Written.FAILED
            log.info("pod %s: status write conflicted (%s); again", name, err.message)
    return Written.FAILED


def token_request(pod: Obj, audiences: list[str], seconds: int) -> dict[str, Any]:
    """The TokenRequest the kubelet sends for a projected token of `pod` (pure): bound to the
    Pod, so the token carries the pod's name and uid and dies with it."""
    meta = pod["metadata"]
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": list(audiences),
            "expirationSeconds": seconds,
            "boundObjectRef": {
                "apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"],
            },
        },
    }  # fmt: skip


def as_api_error(err: ApiException) -> ApiError:
    """The layer's error for one the synchronous client raised (so workers catch one type)."""
    try:
        body = json.loads(err.body) if err.body else {}
    except (TypeError, ValueError):
        body = {}
    return ApiError(int(err.status or 0), str(err.reason or ""), body if isinstance(body, dict)
                    else {})  # fmt: skip


class RunnerKube:
    """The API as pod worker threads see it: blocking calls, run on the runner's loop."""

    def __init__(
        self,
        api: Api,
        loop: asyncio.AbstractEventLoop,
        sync: client.ApiClient | None = None,
        *,
        timeout: float = 30.0,
        pause: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api = api
        self.loop = loop
        self.core = client.CoreV1Api(sync) if sync is not None else None
        self.timeout = timeout + CALL_GRACE
        self.pause = pause

    def call(self, make: Callable[[Api], Awaitable[T]]) -> T:
        """Run `make(api)` on the loop and wait for its result (from a worker thread only)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            raise RuntimeError("a blocking API call on the runner's own loop would wait forever")

        async def run() -> T:
            return await make(self.api)

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        try:
            return future.result(self.timeout)
        except FutureTimeout:
            future.cancel()
            raise Unreachable(f"no answer within {self.timeout:.0f}s") from None

    def read(self, kind: Resource, namespace: str, name: str) -> Obj | None:
        """The object, or None if there is none (404)."""
        try:
            return self.call(lambda api: api.get(kind, namespace, name))
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def write_status(self, pod: Obj, status: Mapping[str, Any]) -> Written:
        return self.call(lambda api: write_status(api, pod, status))

    def _core(self) -> client.CoreV1Api:
        if self.core is None:
            raise RunnerError("no synchronous client: deletion and tokens are not available")
        return self.core

    def finish_deletion(self, pod: Obj) -> None:
        """Delete the terminating pod for good (grace 0), as the kubelet does once its
        containers are gone; transient failures are retried a few times, then left."""
        meta = pod["metadata"]
        if self.core is None:
            log.warning("pod %s/%s: no synchronous client to delete it with", meta["namespace"],
                        meta["name"])  # fmt: skip
            return
        options = client.V1DeleteOptions(
            grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"])
        )
        for attempt in range(1, DELETE_ATTEMPTS + 1):
            try:
                self.core.delete_namespaced_pod(
                    meta["name"], meta["namespace"], grace_period_seconds=0, body=options
                )
                return
            except ApiException as err:
                if err.status in (404, 409):  # gone already, or a new pod of the same name
                    return
                problem: Exception = err
            except Exception as err:  # urllib3: refused or reset while the API server restarts
                problem = err
            log.warning("pod %s/%s: deleting it failed (%s), attempt %d", meta["namespace"],
                        meta["name"], problem, attempt)  # fmt: skip
            if attempt < DELETE_ATTEMPTS:
                self.pause(float(attempt))

    def request_token(self, pod: Obj, service_account: str, audiences: list[str],
                      seconds: int) -> volumes.Grant:  # fmt: skip
        """A token for `service_account`, bound to `pod`, from the TokenRequest API."""
        namespace = str(pod["metadata"]["namespace"])
        body: Any = token_request(pod, audiences, seconds)  # the client sends a dict as it is
        try:
            resp: Any = self._core().create_namespaced_service_account_token(
                service_account, namespace, body, _preload_content=False,
            )  # fmt: skip
            granted = json.loads(resp.data)
        except ApiException as err:
            raise as_api_error(err) from err
        except Exception as err:  # urllib3: refused or reset; a body that is not JSON
            raise Unreachable(f"TokenRequest for {service_account}: {err}") from err
        status = granted.get("status") or {}
        if not status.get("token"):
            raise RunnerError(f"no token granted for service account {service_account}")
        expires = parse_time(status.get("expirationTimestamp"))
        return volumes.Grant(str(status["token"]), expires or time.time() + seconds)


class PodAPI:
    """API reads in one pod's namespace, on behalf of the pod's volumes and env."""

    def __init__(self, kube: RunnerKube, pod: Callable[[], Obj]) -> None:
        self.kube = kube
        self.pod = pod  # the worker's current view of the pod

    @property
    def namespace(self) -> str:
        return str(self.pod()["metadata"]["namespace"])

    def config_map(self, name: str) -> Obj | None:
        return self.kube.read(CONFIGMAPS, self.namespace, name)

    def secret(self, name: str) -> Obj | None:
        return self.kube.read(SECRETS, self.namespace, name)

    def config_map_data(self, name: str) -> dict[str, str] | None:
        obj = self.config_map(name)
        return None if obj is None else dict(obj.get("data") or {})

    def secret_data(self, name: str) -> dict[str, str] | None:
        obj = self.secret(name)
        if obj is None:
            return None
        files = volumes.object_files(obj, binary=True)
        return {k: v.decode(errors="replace") for k, v in files.items()}

    def token(self, service_account: str, audiences: list[str], seconds: int) -> volumes.Grant:
        return self.kube.request_token(self.pod(), service_account, audiences, seconds)

    def fetch(self, issued: Callable[[volumes.TokenFile], None]) -> volumes.Fetch:
        return volumes.Fetch(self.config_map, self.secret, self.token, issued)

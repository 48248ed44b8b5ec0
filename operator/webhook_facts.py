"""What the SandboxRestriction rules ask about, answered: pods, binders, pools, namespaces.

Why a module of its own: admission runs on the API server's critical path (every Sandbox write
waits for it), so answers come from what the operator already knows wherever possible, the
store (its pool pods, SandboxPools and namespaces, all watch-fed), and only a miss costs an
API call (bounded by LOOKUP_TIMEOUT, below the webhook's timeoutSeconds). A pod's IP is
immutable for its UID, so a store hit is final; SubjectAccessReviews are cached for SAR_TTL so
a burst of bindings by one user costs one review.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from crds import constants as c
from crds.pool import SandboxPoolSpec
from nest_operator import admission as adm
from nest_operator.store import Kind, Obj, Store

log = logging.getLogger(__name__)
T = TypeVar("T")
LOOKUP_TIMEOUT = 3.0  # seconds; the webhook's own timeoutSeconds is 5
SAR_TTL = 10.0


@dataclass(frozen=True)
class PoolEntry:
    """A SandboxPool as admission sees it (admission.Pool)."""

    spec: SandboxPoolSpec

    def admits(self, namespace_labels: Mapping[str, str]) -> bool:
        return self.spec.allows_namespace(dict(namespace_labels))


class Facts:
    """Answers the rules' questions: the operator's store first, the API when it misses."""

    def __init__(self, api: client.ApiClient, store: Store | None, threads: int = 4) -> None:
        self.api = api
        self.store = store
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.authz = client.AuthorizationV1Api(api)
        self._sar: dict[tuple[Any, ...], tuple[float, bool]] = {}
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="webhook")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, partial(fn, *args, **kwargs))
        return await asyncio.wait_for(future, LOOKUP_TIMEOUT)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _stored(self, kind: Kind, key: str) -> Obj | None:
        return self.store.get(kind, key) if self.store is not None else None

    async def answer(self, request: adm.Request, questions: adm.Questions) -> adm.Answers:
        pod_ip = await self.pod_ip(questions.pod) if questions.pod else None
        binder = await self.binder(request) if questions.binder else False
        pool = await self.pool(questions.pool) if questions.pool else None
        return adm.Answers(pod_ip=pod_ip, binder=binder, pool=pool)

    async def pod_ip(self, claim: adm.PodClaim) -> str | None:
        """The claimed pod's IP; a pod's IP never changes, so a store hit is the answer."""
        pod = self._stored(Kind.POD, f"{claim.namespace}/{claim.name}")
        if pod is not None and pod["metadata"].get("uid") == claim.uid:
            ip = (pod.get("status") or {}).get("podIP")
            if ip:
                return str(ip)
        try:
            live: Any = await self.call(
                self.core.read_namespaced_pod,
                claim.name,
                claim.namespace,
                _request_timeout=LOOKUP_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        if live.metadata.uid != claim.uid or live.status is None:
            return None
        return str(live.status.pod_ip) if live.status.pod_ip else None

    async def binder(self, request: adm.Request) -> bool:
        """Whether the user may create `sandboxes/binding` here: a SubjectAccessReview."""
        user = request.user
        key = (
            user.username,
            user.uid,
            user.groups,
            tuple(sorted(user.extra.items())),
            request.namespace,
            request.name,
        )
        now = time.monotonic()
        cached = self._sar.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user.username,
                uid=user.uid or None,
                groups=list(user.groups),
                extra={k: list(v) for k, v in user.extra.items()},
                resource_attributes=client.V1ResourceAttributes(
                    namespace=request.namespace,
                    verb="create",
                    group=c.GROUP,
                    resource=c.SANDBOX_PLURAL,
                    subresource=adm.BINDING_SUBRESOURCE,
                    name=request.name or None,
                ),
            )
        )
        result: Any = await self.call(
            self.authz.create_subject_access_review, review, _request_timeout=LOOKUP_TIMEOUT
        )
        allowed = bool(result.status and result.status.allowed)
        if len(self._sar) > 1024:
            self._sar.clear()
        self._sar[key] = (now + SAR_TTL, allowed)
        return allowed

    async def pool(self, use: adm.PoolUse) -> adm.PoolStanding:
        """The pool and the namespace's labels; a miss in the store (a watch not yet caught up
        with a pool or namespace created a moment ago) asks the API server."""
        obj: Any = self._stored(Kind.POOL, f"/{use.pool}")
        if obj is None:
            try:
                obj = await self.call(
                    self.custom.get_cluster_custom_object,
                    c.GROUP,
                    c.VERSION,
                    c.POOL_PLURAL,
                    use.pool,
                    _request_timeout=LOOKUP_TIMEOUT,
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                # A missing object names itself in the 404; a missing kind (no CRD) does not.
                return adm.PoolStanding(modeled='"name"' in (exc.body or ""))
        try:
            spec = SandboxPoolSpec.model_validate((obj or {}).get("spec") or {})
        except ValidationError as exc:  # the schema admitted it; refuse rather than guess
            log.warning("SandboxPool %s unreadable: %s", use.pool, exc)
            return adm.PoolStanding(modeled=True)
        labels = await self.namespace_labels(use.namespace)
        return adm.PoolStanding(modeled=True, pool=PoolEntry(spec), namespace_labels=labels)

    async def namespace_labels(self, name: str) -> dict[str, str] | None:
        stored = self._stored(Kind.NAMESPACE, f"/{name}")
        if stored is not None:
            return dict(stored["metadata"].get("labels") or {})
        try:
            ns: Any = await self.call(
                self.core.read_namespace, name, _request_timeout=LOOKUP_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(ns.metadata.labels or {})

"""SandboxPools in the operator: which pods are nodes (decided here only), and pool status.

Why one module: before SandboxPool, any pod anywhere with the pool label and a Lease became a
node, so anyone allowed to create a pod in any namespace could attract other tenants' code.
Now a pod labelled `nest.sandbox.dev/pool=P` is a node only if SandboxPool P exists and the pod
is in P's podNamespace and matches P's podSelector. `Pools.membership` is that rule, and the
scheduler (which pods to feed its cache), the lifecycle controller (whose sandboxes to evict)
and the status below all ask it, so they cannot disagree.

A labelled pod that is not a member is ignored, with one Warning Event (`NotInPool`) per reason
and operator run, never one per resync or Lease renewal. A SandboxPool that the API server
accepted but the models refuse (a selector clause `In` without values, say) has no members:
tenancy rules that cannot be read are not guessed at.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from crds import constants as c
from crds.pool import PoolConditionType, SandboxPool, Tenancy
from nest_operator import adapters
from nest_operator.kube import Kube
from nest_operator.scheduler import PoolPolicy
from nest_operator.store import Kind, Obj, Store

log = logging.getLogger(__name__)
NOT_IN_POOL = "NotInPool"


def pool_key(name: str) -> str:
    """The store key of a cluster-scoped object."""
    return f"/{name}"


def pool_of(pod: Obj) -> str:
    """The pool a pod's label names ("" when it has none)."""
    return str((pod["metadata"].get("labels") or {}).get(c.POOL_LABEL) or "")


def policy_of(pool: SandboxPool) -> PoolPolicy:
    """A SandboxPool as the scheduler's TenantIsolation reads it."""
    spec = pool.spec
    return PoolPolicy(
        name=pool.name,
        isolation=frozenset(mode.value for mode in spec.isolation),
        dedicated=spec.tenancy is Tenancy.DEDICATED,
        allows_namespace=(
            None if spec.namespace_selector.is_empty() else spec.namespace_selector.matches
        ),
    )


class Pools:
    """The SandboxPools of the store, each parsed once per generation."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # name -> ((uid, generation), the model or why it is invalid)
        self._parsed: dict[str, tuple[tuple[str, int], SandboxPool | str]] = {}

    def parsed(self, name: str) -> SandboxPool | str | None:
        """The pool's model, a message if the models refuse it, None if there is no such pool."""
        obj = self.store.get(Kind.POOL, pool_key(name))
        if obj is None:
            self._parsed.pop(name, None)
            return None
        meta = obj["metadata"]
        version = (str(meta.get("uid")), int(meta.get("generation") or 0))
        cached = self._parsed.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            result: SandboxPool | str = SandboxPool.model_validate(
                {"metadata": meta, "spec": obj.get("spec") or {}}
            )
        except ValidationError as exc:
            result = f"invalid spec: {_first_error(exc)}"
            log.warning("SandboxPool %s: %s", name, result)
        self._parsed[name] = (version, result)
        return result

    def get(self, name: str) -> SandboxPool | None:
        pool = self.parsed(name)
        return pool if isinstance(pool, SandboxPool) else None

    def policy(self, name: str) -> PoolPolicy | None:
        pool = self.get(name)
        return None if pool is None else policy_of(pool)

    def membership(self, pod: Obj) -> str | None:
        """None when `pod` is a node of the pool its label names, else why it is not."""
        name = pool_of(pod)
        pool = self.parsed(name)
        if pool is None:
            return f"there is no SandboxPool {name}"
        if isinstance(pool, str):
            return f"SandboxPool {name} has an {pool}"
        meta = pod["metadata"]
        return pool.spec.pod_problem(name, meta["namespace"], dict(meta.get("labels") or {}))

    def members(self, name: str) -> list[Obj]:
        """The pods that are nodes of pool `name`, sorted by namespace/name."""
        pods = self.store.labelled(Kind.POD, c.POOL_LABEL, name)
        found = [p for p in pods if self.membership(p) is None]
        return sorted(found, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def pool_status(pool: Obj, parsed: SandboxPool | str, members: Sequence[Obj], now: float) -> Obj:
    """The status a pool should have: member counts and its Available condition."""
    name = pool["metadata"]["name"]
    ready = sum(
        1
        for pod in members
        if adapters.condition_true(pod, "Ready") and not pod["metadata"].get("deletionTimestamp")
    )
    if isinstance(parsed, str):
        available, reason, message = "False", "InvalidSpec", parsed
    elif ready:
        available, reason, message = "True", "PodsReady", f"{ready} of {len(members)} pods Ready"
    elif members:
        available, reason, message = "False", "NoReadyPods", f"none of {len(members)} pods Ready"
    else:
        selector = parsed.spec.pod_selector.to_selector_string() or "(every pod)"
        available, reason = "False", "NoPods"
        message = (
            f"no pod of namespace {parsed.spec.pod_namespace} labelled {c.POOL_LABEL}={name} "
            f"matches {selector}"
        )
    current = pool.get("status") or {}
    since = now
    for cond in current.get("conditions") or []:
        if cond.get("type") == PoolConditionType.AVAILABLE and cond.get("status") == available:
            since = adapters.timestamp(cond.get("lastTransitionTime")) or now
    condition = {
        "type": PoolConditionType.AVAILABLE.value,
        "status": available,
        "reason": reason,
        "message": message,
        "lastTransitionTime": adapters.rfc3339(since),
    }
    return {
        "pods": len(members),
        "readyPods": ready,
        "conditions": [condition],
        "observedGeneration": int(pool["metadata"].get("generation") or 0),
    }


def _same(current: Obj, desired: Obj) -> bool:
    # pool_status keeps the condition's lastTransitionTime while its status holds, so an
    # unchanged pool compares equal and costs no write.
    return all(current.get(key) == value for key, value in desired.items())


class PoolController:
    """Keeps each SandboxPool's status current and warns once about labelled non-members."""

    def __init__(self, store: Store, kube: Kube, pools: Pools) -> None:
        self.store = store
        self.kube = kube
        self.pools = pools
        self._warned: dict[str, str] = {}  # pod uid -> the reason it was last warned about

    def pod_changed(self, pod: Obj, deleted: bool) -> None:
        """Record a Warning Event the first time a labelled pod is found not to be a node."""
        uid = pod["metadata"]["uid"]
        problem = None if deleted else self.pools.membership(pod)
        if problem is None:
            self._warned.pop(uid, None)
            return
        if self._warned.get(uid) == problem:
            return
        self._warned[uid] = problem
        involved: dict[str, Any] = {**pod, "apiVersion": "v1", "kind": "Pod"}
        message = f"ignored: not a node of pool {pool_of(pod)}: {problem}"
        self.kube.event(involved, "Warning", NOT_IN_POOL, message)
        log.info("pod %s/%s %s", pod["metadata"]["namespace"], pod["metadata"]["name"], message)

    async def reconcile(self, name: str, now: float) -> None:
        pool = self.store.get(Kind.POOL, pool_key(name))
        parsed = self.pools.parsed(name)
        if pool is None or parsed is None:
            return
        members = self.pools.members(name) if isinstance(parsed, SandboxPool) else []
        desired = pool_status(pool, parsed, members, now)
        if _same(pool.get("status") or {}, desired):
            return
        await self.kube.patch_status(Kind.POOL, "", name, desired)

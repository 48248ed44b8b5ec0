"""The scheduler cache: pool pods with their sandboxes, including bindings only assumed so far.

Why: a decision is made, then the shell patches the Sandbox, then the watch reports the binding.
Between the decision and the watch event the pod must already count the sandbox, or the next
decisions would overbook it (kube-scheduler's AssumePod). An assumed binding is confirmed by the
watch (`add_sandbox`), dropped when the bind patch fails (`forget`) and expires after a TTL in
case the watch never reports it (`expire`); each of these says what it freed, since freed
capacity is what lets a waiting sandbox fit. Time is injected; nothing here does I/O.
The per-pool index keeps pods sorted by name so every walk over them is deterministic.
The cache also holds what tenancy decisions read besides pods: each SandboxPool's policy (also
attached to its pods' `PodInfo`, so a filter reaches it without a lookup) and namespace labels.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from nest_operator.errors import AlreadyBound, UnknownPod
from nest_operator.scheduler.snapshot import (
    BoundSandbox,
    PodInfo,
    PoolPod,
    PoolPolicy,
    SandboxRequest,
)

DEFAULT_ASSUME_TTL = 30.0


@dataclass(frozen=True, slots=True)
class _Assumed:
    pod_uid: str
    deadline: float


class SchedulerCache:
    """Pool pods and their sandboxes; the scheduler's only input besides the request."""

    def __init__(self, assume_ttl: float = DEFAULT_ASSUME_TTL) -> None:
        self._assume_ttl = assume_ttl
        self._pods: dict[str, PodInfo] = {}
        self._sandbox_pod: dict[str, str] = {}  # sandbox uid -> pod uid, bound or assumed
        self._assumed: dict[str, _Assumed] = {}
        # pool -> pods sorted by name, and their names for bisect.
        self._pools: dict[str, list[PodInfo]] = {}
        self._pool_names: dict[str, list[str]] = {}
        self._policies: dict[str, PoolPolicy] = {}
        self._namespaces: dict[str, Mapping[str, str]] = {}  # namespace -> its labels

    # --- pools and namespaces --------------------------------------------------------------

    def set_pool(self, policy: PoolPolicy) -> None:
        """Add or replace a SandboxPool's policy; its pods see the new one at once."""
        self._policies[policy.name] = policy
        for info in self._pools.get(policy.name, ()):
            info.policy = policy

    def remove_pool(self, name: str) -> None:
        self._policies.pop(name, None)
        for info in self._pools.get(name, ()):
            info.policy = None

    def policy(self, pool: str) -> PoolPolicy | None:
        return self._policies.get(pool)

    def set_namespace(self, name: str, labels: Mapping[str, str]) -> None:
        self._namespaces[name] = labels

    def remove_namespace(self, name: str) -> None:
        self._namespaces.pop(name, None)

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        """A namespace's labels; none while it is unknown (not yet seen by the watch)."""
        return self._namespaces.get(name, {})

    # --- pods ------------------------------------------------------------------------------

    def set_pod(self, pod: PoolPod) -> None:
        """Add a pool pod or replace its snapshot (lease renewal, readiness, cordon, capacity)."""
        info = self._pods.get(pod.uid)
        if info is None:
            self._pods[pod.uid] = info = PodInfo(pod)
            self._index(info)
            return
        moved = info.pod.pool != pod.pool or info.pod.name != pod.name
        if moved:
            self._unindex(info)
        info.pod = pod
        if moved:
            self._index(info)

    def remove_pod(self, uid: str) -> list[str]:
        """Forget a pod; returns the UIDs of the sandboxes it held, which are now unbound."""
        info = self._pods.pop(uid, None)
        if info is None:
            return []
        self._unindex(info)
        for sandbox_uid in info.sandboxes:
            del self._sandbox_pod[sandbox_uid]
            self._assumed.pop(sandbox_uid, None)
        return sorted(info.sandboxes)

    def pod(self, uid: str) -> PodInfo:
        try:
            return self._pods[uid]
        except KeyError:
            raise UnknownPod(uid) from None

    def pods(self) -> Iterator[PodInfo]:
        return iter(self._pods.values())

    @property
    def pod_count(self) -> int:
        return len(self._pods)

    def pool(self, pool: str) -> Sequence[PodInfo]:
        """The pods of one pool, sorted by name."""
        return self._pools.get(pool, ())

    def pool_position(self, pool: str, name: str) -> int:
        """Where a pod named `name` is, or would be, in `pool(pool)`."""
        return bisect.bisect_left(self._pool_names.get(pool, ()), name)

    def _index(self, info: PodInfo) -> None:
        info.policy = self._policies.get(info.pod.pool)
        names = self._pool_names.setdefault(info.pod.pool, [])
        at = bisect.bisect_left(names, info.pod.name)
        names.insert(at, info.pod.name)
        self._pools.setdefault(info.pod.pool, []).insert(at, info)

    def _unindex(self, info: PodInfo) -> None:
        pods = self._pools[info.pod.pool]
        at = pods.index(info)
        del pods[at]
        del self._pool_names[info.pod.pool][at]

    # --- sandboxes -------------------------------------------------------------------------

    def add_sandbox(self, sandbox: BoundSandbox) -> None:
        """The watch saw a bound sandbox: count it, confirming an assumption if there was one."""
        target = self.pod(sandbox.pod_uid)
        self._assumed.pop(sandbox.uid, None)
        current = self._sandbox_pod.get(sandbox.uid)
        if current is not None:
            # Already counted (assumed or a repeated event): re-add in case the pod changed.
            self._pods[current].remove(sandbox.uid)
        target.add(sandbox)
        self._sandbox_pod[sandbox.uid] = sandbox.pod_uid

    def remove_sandbox(self, uid: str) -> BoundSandbox | None:
        """The sandbox is gone or unbound: stop counting it; returns what it held, if anything
        (freed capacity: what the scheduling queue's hints are told)."""
        self._assumed.pop(uid, None)
        pod_uid = self._sandbox_pod.pop(uid, None)
        if pod_uid is None:
            return None
        return self._pods[pod_uid].remove(uid)

    def bound(self, uid: str) -> BoundSandbox | None:
        """The sandbox as counted now (bound or assumed), None when it is on no known pod."""
        pod_uid = self._sandbox_pod.get(uid)
        return None if pod_uid is None else self._pods[pod_uid].sandboxes.get(uid)

    def assume(self, request: SandboxRequest, pod_uid: str, now: float) -> None:
        """Count `request` on the pod right away, until the watch confirms it or it expires."""
        if request.uid in self._sandbox_pod:
            raise AlreadyBound(
                f"sandbox {request.uid} is already on pod {self._sandbox_pod[request.uid]}"
            )
        self.pod(pod_uid).add(request.bound_to(pod_uid))
        self._sandbox_pod[request.uid] = pod_uid
        self._assumed[request.uid] = _Assumed(pod_uid, now + self._assume_ttl)

    def forget(self, uid: str) -> BoundSandbox | None:
        """The bind patch failed: undo the assumption (a confirmed binding stays); returns the
        capacity it gave back."""
        if uid in self._assumed:
            return self.remove_sandbox(uid)
        return None

    def is_assumed(self, uid: str) -> bool:
        return uid in self._assumed

    def expire(self, now: float) -> list[BoundSandbox]:
        """Drop assumptions older than the TTL that no watch event confirmed; returns them,
        sorted by sandbox UID."""
        expired = sorted(uid for uid, a in self._assumed.items() if a.deadline <= now)
        freed = [self.remove_sandbox(uid) for uid in expired]
        return [sandbox for sandbox in freed if sandbox is not None]

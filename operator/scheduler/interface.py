"""What plugins, framework and queue share: `Status`, `Decision`, cluster events, the protocols.

Why: kube-scheduler's framework (pkg/scheduler/framework/interface.go) has every plugin answer
with a Status carrying a code and the plugin's name, so that the one who reads the answer knows
who refused and whether waiting can help. Here too: `Unschedulable` means the pod may fit once
something changes (a sandbox leaves, the pod's capacity grows); `UnschedulableAndUnresolvable`
means no freed capacity will ever help (the pod is not ready, cordoned, too small for the
sandbox even empty, or the pool refuses its tenant) and only an event about the pod or the
pool itself can. The scheduling queue uses both: a plugin registers the events that may make
its refusals go away, and for each such event a hint (QueueingHint) says whether this one may,
for this sandbox. A filter answers None when the pod fits: the common case costs nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from nest_operator.scheduler.snapshot import BoundSandbox, PodInfo, PoolPod, SandboxRequest

if TYPE_CHECKING:
    from nest_operator.scheduler.cache import SchedulerCache


class Code(enum.StrEnum):
    """kube-scheduler's status codes that the operator's scheduler uses."""

    SUCCESS = "Success"
    UNSCHEDULABLE = "Unschedulable"
    UNRESOLVABLE = "UnschedulableAndUnresolvable"
    ERROR = "Error"


class Status(NamedTuple):
    """A plugin's answer. A tuple, so counting equal answers over 1,000 pods stays cheap."""

    code: Code
    reason: str
    plugin: str

    @property
    def message(self) -> str:
        """`Plugin: reason`: a FailedScheduling message says which plugin refused."""
        return f"{self.plugin}: {self.reason}"

    def __str__(self) -> str:
        return self.message


def unschedulable(plugin: str, reason: str) -> Status:
    return Status(Code.UNSCHEDULABLE, reason, plugin)


def unresolvable(plugin: str, reason: str) -> Status:
    return Status(Code.UNRESOLVABLE, reason, plugin)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Who refused an unschedulable sandbox, for the queue's hints: every plugin that refused
    some pod (the pre-filter always: no pod of the pool took it), and those of them with a
    refusal that waiting may resolve (Unschedulable, not UnschedulableAndUnresolvable)."""

    plugins: frozenset[str]
    resolvable: frozenset[str]


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a sandbox goes, or why it goes nowhere."""

    pod: PoolPod | None
    # When unschedulable: (status, number of pods) sorted by count descending, then message.
    reasons: tuple[tuple[Status, int], ...] = ()
    total_pods: int = 0
    score: int = 0
    rejection: Rejection | None = None  # when unschedulable

    @property
    def scheduled(self) -> bool:
        return self.pod is not None

    @property
    def message(self) -> str:
        """kube-scheduler's FitError text, each reason naming its plugin, e.g.
        `0/3 pods available: 2 ResourcesFit: insufficient memory, 1 PodReady: not ready.`"""
        if self.pod is not None:
            return f"assigned to {self.pod.namespace}/{self.pod.name}"
        details = ", ".join(f"{count} {status.message}" for status, count in self.reasons)
        return f"0/{self.total_pods} pods available" + (f": {details}." if details else ".")


class EventKind(enum.StrEnum):
    """What happened in the cluster that may let a waiting sandbox fit (kube's ClusterEvent)."""

    POD_ADDED = "PodAdded"  # a pool pod became a node of a pool (created, or joined it)
    POD_UPDATED = "PodUpdated"  # a node's snapshot changed: readiness, cordon, declared capacity
    LEASE_RENEWED = "LeaseRenewed"  # only its Lease's renewTime moved: a heartbeat
    CAPACITY_FREED = "CapacityFreed"  # a sandbox left a pod, or promises less on it
    POOL_CHANGED = "PoolChanged"  # a SandboxPool's spec: policy, which pods are its nodes
    NAMESPACE_CHANGED = "NamespaceChanged"  # a namespace's labels (a pool's namespaceSelector)


# Events that only free capacity: a refusal that waiting cannot resolve ignores them.
CAPACITY_EVENTS = frozenset({EventKind.CAPACITY_FREED})


@dataclass(frozen=True, slots=True)
class ClusterEvent:
    """One event as the hints see it. `pool`: the pool it concerns; `old`/`new`: the pod's
    snapshots around it; `freed`: the sandbox that left; `at`: wall-clock seconds, for the
    Lease freshness both snapshots are judged by."""

    kind: EventKind
    pool: str = ""
    old: PoolPod | None = None
    new: PoolPod | None = None
    freed: BoundSandbox | None = None
    namespace: str = ""
    at: float = 0.0


class Plugin(Protocol):
    """What every plugin has: a name (the registry's and the messages') and its queueing hints."""

    name: str
    # The events after which a sandbox this plugin refused may fit (kube's EventsToRegister).
    events: frozenset[EventKind]

    def hint(self, request: SandboxRequest, event: ClusterEvent) -> bool:
        """Whether `event` may make this plugin's refusal of `request` go away (Queue), or
        certainly does not (QueueSkip). Only asked for events in `events`."""
        ...


class PreFilterPlugin(Plugin, Protocol):
    """Narrows the pods worth looking at before any per-pod filter runs."""

    # How a pod outside the candidates is counted (the same for all of them).
    outside: Status

    def candidates(self, request: SandboxRequest, cache: SchedulerCache) -> Sequence[PodInfo]:
        """The pods that may run `request`, sorted by name."""
        ...


class FilterPlugin(Plugin, Protocol):
    def filter(self, request: SandboxRequest, info: PodInfo, now: float) -> Status | None:
        """None when `info` can run `request`, else why not."""
        ...


@runtime_checkable
class PoolCheck(Protocol):
    """The once-per-decision part of a filter: a refusal that holds for every pod of the pool."""

    def pre_filter(self, request: SandboxRequest, cache: SchedulerCache) -> Status | None:
        """None when the pool's pods may be looked at for `request`, else why none fits."""
        ...


class ScorePlugin(Protocol):
    name: str

    def score(self, request: SandboxRequest, info: PodInfo) -> int:
        """0..MAX_SCORE: how good `info` is for `request`."""
        ...

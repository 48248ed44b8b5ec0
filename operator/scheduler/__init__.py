"""The operator's scheduler: sandboxes onto pool pods, as a pure core the kopf shell drives."""

from nest_operator.scheduler.cache import DEFAULT_ASSUME_TTL, SchedulerCache
from nest_operator.scheduler.framework import (
    DEFAULT_FEASIBLE_PODS_TO_SCORE,
    DEFAULT_PROFILE,
    DEFAULT_SCORES,
    PluginArgs,
    Profile,
    Scheduler,
    default_filters,
)
from nest_operator.scheduler.interface import (
    ClusterEvent,
    Code,
    Decision,
    EventKind,
    Rejection,
    Status,
)
from nest_operator.scheduler.queue import SchedulingQueue
from nest_operator.scheduler.snapshot import (
    BoundSandbox,
    PodInfo,
    PoolPod,
    PoolPolicy,
    SandboxRequest,
    parse_cpu,
    parse_memory,
)

__all__ = [
    "DEFAULT_ASSUME_TTL",
    "DEFAULT_FEASIBLE_PODS_TO_SCORE",
    "DEFAULT_PROFILE",
    "DEFAULT_SCORES",
    "BoundSandbox",
    "ClusterEvent",
    "Code",
    "Decision",
    "EventKind",
    "PluginArgs",
    "PodInfo",
    "PoolPod",
    "PoolPolicy",
    "Profile",
    "Rejection",
    "SandboxRequest",
    "Scheduler",
    "SchedulerCache",
    "SchedulingQueue",
    "Status",
    "default_filters",
    "parse_cpu",
    "parse_memory",
]

"""The NativeDependencies filter alone, its inputs from the Lease and the Sandbox, and the cycle
keeping a namespace-mode sandbox off a pod whose runtime holds another version of a native."""

from __future__ import annotations

import json

from crds import constants as c
from nest_operator.adapters import bound_sandbox, native_distributions, pool_pod, sandbox_request
from nest_operator.scheduler import (
    BoundSandbox,
    Code,
    PodInfo,
    SandboxRequest,
    Scheduler,
    SchedulerCache,
)
from nest_operator.scheduler.plugins import NativeDependencies, native_conflict
from tests.unit.operator.test_scheduler import MI, NOW, pod

PLUGIN = NativeDependencies()


def request(isolation: str = "namespace", *natives: str) -> SandboxRequest:
    return SandboxRequest(
        "s", "team", "uid-s", "default", 64 * MI, 100, isolation,
        native_distributions=frozenset(natives),
    )  # fmt: skip


def test_a_conflict_names_the_package_and_both_versions() -> None:
    assert native_conflict(["NumPy==2.0"], ["numpy==1.26"]) == ("numpy", "2.0", "1.26")
    assert native_conflict(["numpy==1.26"], ["numpy==1.26", "markupsafe==3"]) is None
    assert native_conflict(["Markup_Safe==3"], ["markup-safe==2"]) == ("markup-safe", "3", "2")
    assert native_conflict(["numpy"], ["numpy==1"]) is None  # malformed: no claim to check


def test_pods_whose_runtime_loaded_another_version_are_filtered() -> None:
    info = PodInfo(pod(native_distributions=frozenset({"numpy==1.26"})))
    status = PLUGIN.filter(request("namespace", "numpy==2.0"), info, NOW)
    assert status is not None and status.code == Code.UNSCHEDULABLE  # the holder may leave
    assert status.message == "NativeDependencies: its runtime holds numpy==1.26, not 2.0"
    assert PLUGIN.filter(request("namespace", "numpy==1.26"), info, NOW) is None
    assert PLUGIN.filter(request("namespace", "pandas==2"), info, NOW) is None
    # Subprocess sandboxes have an interpreter each; no natives declared: nothing to check.
    assert PLUGIN.filter(request("subprocess", "numpy==2.0"), info, NOW) is None
    assert PLUGIN.filter(request("namespace"), info, NOW) is None


def test_natives_promised_to_bound_sandboxes_count_before_the_lease_says_so() -> None:
    info = PodInfo(pod())
    bound = BoundSandbox(
        "b", "uid-p0", MI, 1, None, None, "team", "namespace", frozenset({"numpy==1.26"})
    )
    info.add(bound)
    assert PLUGIN.filter(request("namespace", "numpy==2.0"), info, NOW) is not None
    info.remove("b")
    assert PLUGIN.filter(request("namespace", "numpy==2.0"), info, NOW) is None
    info.add(request("subprocess", "numpy==1.26").bound_to("uid-p0"))  # its own interpreter
    assert PLUGIN.filter(request("namespace", "numpy==2.0"), info, NOW) is None


def test_the_cycle_places_a_conflicting_sandbox_on_another_pod() -> None:
    cache = SchedulerCache()
    cache.set_pod(pod("p0", native_distributions=frozenset({"numpy==1.26"})))
    cache.set_pod(pod("p1"))
    decision = Scheduler().schedule(request("namespace", "numpy==2.0"), cache, NOW)
    assert decision.pod is not None and decision.pod.name == "p1"
    cache.set_pod(pod("p1", native_distributions=frozenset({"numpy==1.25"})))
    refused = Scheduler().schedule(request("namespace", "numpy==2.0"), cache, NOW)
    assert refused.pod is None
    assert refused.message == (
        "0/2 pods available: 1 NativeDependencies: its runtime holds numpy==1.25, not 2.0, "
        "1 NativeDependencies: its runtime holds numpy==1.26, not 2.0."
    )


def test_the_adapters_read_the_lease_and_the_sandbox_annotation() -> None:
    listed = {c.NATIVE_DISTRIBUTIONS_ANNOTATION: json.dumps(["numpy==1.26"])}
    assert native_distributions(listed) == {"numpy==1.26"}
    assert native_distributions({c.NATIVE_DISTRIBUTIONS_ANNOTATION: "not json"}) == frozenset()
    assert native_distributions(None) == frozenset()
    meta = {"name": "p0", "namespace": "nest", "uid": "u", "labels": {c.POOL_LABEL: "default"}}
    lease = {"metadata": {"annotations": listed}, "spec": {}}
    assert pool_pod({"metadata": meta}, lease).native_distributions == {"numpy==1.26"}
    sandbox = {
        "metadata": {"name": "s", "namespace": "team", "uid": "s1", "annotations": listed,
                     "labels": {c.POD_UID_LABEL: "u"}},
        "spec": {"function": {"isolation": "namespace"}},
    }  # fmt: skip
    assert sandbox_request(sandbox).native_distributions == {"numpy==1.26"}
    bound = bound_sandbox(sandbox)
    assert bound is not None and bound.native_distributions == {"numpy==1.26"}
    refused = bound_sandbox({**sandbox, "status": {"phase": "Failed"}})
    assert refused is not None and refused.native_distributions == frozenset()

"""The operator reads CRD defaults from the crds models, and the autoscaler parses its
configuration with the model once per resourceVersion (issue 12: one schema)."""

from __future__ import annotations

from typing import Any

import pytest

from crds import Autoscaling, Resources, SandboxDeploymentSpec, Strategy
from nest_operator import adapters
from nest_operator.autoscaler_controller import ConfigCache, config_of
from nest_operator.autoscaler_policy import AutoscalerConfig
from nest_operator.scheduler import parse_cpu, parse_memory


def _deployment(uid: str, version: str, scaling: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"replicas": 1, "template": {"spec": {"function": {"concurrency": 3}}}}
    if scaling is not None:
        spec["autoscaling"] = scaling
    meta = {"uid": uid, "resourceVersion": version, "name": uid, "namespace": "ns"}
    return {"metadata": meta, "spec": spec}


def test_an_undefaulted_deployment_gets_the_models_defaults() -> None:
    info = adapters.deployment_info({"metadata": {"name": "d"}, "spec": {}}, ())
    spec_fields = SandboxDeploymentSpec.model_fields
    assert info.replicas == spec_fields["replicas"].default
    assert info.strategy == Strategy().type.value
    assert (info.max_surge, info.max_unavailable) == ("25%", "25%")
    assert info.revision_history_limit == spec_fields["revision_history_limit"].default
    assert info.progress_deadline_seconds == spec_fields["progress_deadline_seconds"].default


def test_a_stored_strategy_is_read_through_its_model() -> None:
    spec = {"strategy": {"type": "Recreate"}, "replicas": 2}
    info = adapters.deployment_info({"metadata": {"name": "d"}, "spec": spec}, ())
    assert (info.strategy, info.max_surge, info.replicas) == ("Recreate", "25%", 2)
    spec = {"strategy": {"rollingUpdate": {"maxSurge": 1}}}
    info = adapters.deployment_info({"metadata": {"name": "d"}, "spec": spec}, ())
    assert (info.strategy, info.max_surge, info.max_unavailable) == ("RollingUpdate", 1, "25%")


def test_a_sandbox_without_resources_requests_the_models_defaults() -> None:
    sandbox = {"metadata": {"name": "s", "namespace": "ns", "uid": "u"}, "spec": {"function": {}}}
    request = adapters.sandbox_request(sandbox)
    assert request.memory == parse_memory(Resources().memory)
    assert request.cpu == parse_cpu(Resources().cpu)
    assert (request.pool, request.isolation) == ("default", "subprocess")


def test_autoscaler_defaults_are_the_models() -> None:
    defaults = Autoscaling(max_replicas=1)
    config = AutoscalerConfig(max_replicas=1, target_concurrency=1)
    assert AutoscalerConfig.of(defaults, 1) == config
    assert config.target_utilization == pytest.approx(defaults.target_utilization)
    assert config.stable_window_seconds == defaults.stable_window_seconds


def test_an_autoscaling_the_model_refuses_is_skipped_not_fatal() -> None:
    assert config_of(_deployment("a", "1", {"minReplicas": 2})) is None  # no maxReplicas
    assert config_of(_deployment("a", "1", {"maxReplicas": 1, "minReplicas": 2})) is None


def test_the_config_cache_parses_once_per_resource_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[str] = []
    real = Autoscaling.model_validate

    def counting(obj: Any, *args: Any, **kwargs: Any) -> Autoscaling:
        parsed.append("x")
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(Autoscaling, "model_validate", counting)
    cache = ConfigCache()
    a, b = _deployment("a", "1", {"maxReplicas": 4}), _deployment("b", "1", None)
    first = cache.scaled([a, b])
    assert [(d["metadata"]["uid"], c.max_replicas, c.target_concurrency) for d, c in first] == [
        ("a", 4, 3.0)
    ]
    assert cache.scaled([a, b]) == first and len(parsed) == 1  # unchanged: not parsed again
    changed = _deployment("a", "2", {"maxReplicas": 6})
    assert [c.max_replicas for _, c in cache.scaled([changed])] == [6] and len(parsed) == 2
    cache.scaled([])  # deleted: forgotten, so a re-created object with its old version parses
    cache.scaled([changed])
    assert len(parsed) == 3

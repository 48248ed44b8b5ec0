"""The models accept what the design allows and reject the rest with messages naming the rule."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes.utils import parse_quantity as _parse_quantity
from pydantic import ValidationError

from crds import (
    Autoscaling,
    CodeSource,
    EndpointAddress,
    Function,
    LabelSelector,
    LabelSelectorRequirement,
    Resources,
    RollingUpdate,
    Sandbox,
    SandboxDeployment,
    SandboxEndpoints,
    SandboxPhase,
    SandboxReplicaSet,
    SandboxStatus,
)
from crds.common import QUANTITY_PATTERN

SHA = "a" * 64
parse_quantity: Callable[[str], Decimal] = _parse_quantity


def sandbox_doc(**function: Any) -> dict[str, Any]:
    body = {"handler": "main:handler", "source": {"path": "/opt/fn"}, **function}
    return {"metadata": {"name": "s"}, "spec": {"function": body}}


def workload_doc(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "w"},
        "spec": {
            "selector": {"matchLabels": {"app": "w"}},
            "template": {
                "metadata": {"labels": {"app": "w", "tier": "fn"}},
                "spec": {"function": {"handler": "main:handler", "source": {"path": "/x"}}},
            },
            **spec,
        },
    }


def test_wire_names_are_camel_case_and_defaults_are_filled() -> None:
    sbx = Sandbox.model_validate(sandbox_doc(timeoutSeconds=5))
    wire = sbx.to_k8s()
    assert wire["apiVersion"] == "nest.sandbox.dev/v1alpha1"
    assert wire["kind"] == "Sandbox"
    function = wire["spec"]["function"]
    assert function["timeoutSeconds"] == 5
    assert function["isolation"] == "subprocess"
    assert function["resources"] == {"memory": "64Mi", "cpu": "100m"}
    assert wire["spec"]["restartPolicy"] == "Always"
    assert "podName" not in wire["spec"]  # unset optionals are omitted, never null
    assert wire["status"]["phase"] == "Pending"
    assert Sandbox.model_validate(wire) == sbx


def test_python_names_are_accepted_too() -> None:
    fn = Function(handler="pkg.mod:fn", source=CodeSource(path="/x"), timeout_seconds=9)
    assert fn.to_k8s()["timeoutSeconds"] == 9


def test_pod_ip_uses_the_kubernetes_spelling() -> None:
    status = SandboxStatus(pod_ip="10.0.0.1", port=8080, phase=SandboxPhase.RUNNING)
    assert status.to_k8s()["podIP"] == "10.0.0.1"
    assert SandboxStatus.model_validate({"podIP": "10.0.0.2"}).pod_ip == "10.0.0.2"


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="timeoutSecond"):
        Sandbox.model_validate(sandbox_doc(timeoutSecond=5))


@pytest.mark.parametrize(
    "source",
    [
        {},
        {"path": "/x", "inline": {"a.py": ""}},
        {"configMap": {"name": "c"}, "url": "https://e/x.zip", "sha256": SHA},
    ],
)
def test_exactly_one_code_source(source: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="exactly one code source"):
        CodeSource.model_validate(source)


@pytest.mark.parametrize(
    "source",
    [
        {"inline": {"main.py": "x = 1", "lib/util.py": ""}},
        {"configMap": {"name": "code", "key": "main.py"}},
        {"url": "https://example.com/f.zip", "sha256": SHA},
        {"path": "/opt/functions/hello"},
    ],
)
def test_each_code_source_alone_is_valid(source: dict[str, Any]) -> None:
    assert CodeSource.model_validate(source).to_k8s() == source


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"url": "https://e/x.zip"}, "url and sha256 go together"),
        ({"path": "/x", "sha256": SHA}, "url and sha256 go together"),
        ({"url": "https://e/x.zip", "sha256": "ABC"}, "sha256"),
        ({"url": "ftp://e/x.zip", "sha256": SHA}, "url"),
        ({"path": "relative/dir"}, "path"),
        ({"inline": {"../evil.py": ""}}, "relative path"),
        ({"inline": {"/etc/passwd": ""}}, "relative path"),
        ({"inline": {}}, "inline"),
    ],
)
def test_bad_sources(source: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CodeSource.model_validate(source)


@pytest.mark.parametrize(
    "handler", ["main", "main:", ":fn", "1mod:fn", "a-b:fn", "m:f:g", "a..b:f"]
)
def test_bad_handlers(handler: str) -> None:
    with pytest.raises(ValidationError, match="handler"):
        Sandbox.model_validate(sandbox_doc(handler=handler))


def test_missing_handler_is_named() -> None:
    doc = sandbox_doc()
    del doc["spec"]["function"]["handler"]
    with pytest.raises(ValidationError, match=r"spec\.function\.handler"):
        Sandbox.model_validate(doc)


def test_unknown_isolation_is_rejected() -> None:
    with pytest.raises(ValidationError, match="isolation"):
        Sandbox.model_validate(sandbox_doc(isolation="vm"))


@pytest.mark.parametrize("memory", ["64MB", "-1Gi", "lots", "", "1e.5", True, -5, 0.5])
def test_bad_quantities(memory: object) -> None:
    with pytest.raises(ValidationError, match="memory"):
        Resources.model_validate({"memory": memory})


@pytest.mark.parametrize("memory", ["64Mi", "1.5Gi", "1e9", 134217728, "0.5"])
def test_good_quantities(memory: object) -> None:
    assert Resources.model_validate({"memory": memory}).memory == memory


def _client_parses(quantity: str) -> bool:
    try:
        parse_quantity(quantity)
    except ValueError:
        return False
    return True


@settings(max_examples=500)
@given(st.from_regex(QUANTITY_PATTERN, fullmatch=True))
def test_every_quantity_the_schema_accepts_is_positive_for_the_kubernetes_client(
    quantity: str,
) -> None:
    # The scheduler sums quantities with kubernetes.utils.parse_quantity; the schema's pattern is
    # the model's, so whatever the API server stores the scheduler can add up, and it is > 0.
    assert Resources(memory=quantity).memory == quantity
    assert _client_parses(quantity)
    assert parse_quantity(quantity) > 0


def test_env_is_a_map_with_valid_names() -> None:
    sbx = Sandbox.model_validate(sandbox_doc(env={"LOG_LEVEL": "debug"}))
    assert sbx.spec.function.env == {"LOG_LEVEL": "debug"}
    with pytest.raises(ValidationError, match=r"env 'a-b'.*env '1BAD'"):
        Sandbox.model_validate(sandbox_doc(env={"a-b": "x", "1BAD": "y", "ok": "z"}))


@pytest.mark.parametrize(("field", "value"), [("timeoutSeconds", 0), ("concurrency", 0)])
def test_ranges(field: str, value: int) -> None:
    with pytest.raises(ValidationError, match=field):
        Sandbox.model_validate(sandbox_doc(**{field: value}))


def test_deployment_defaults_mirror_apps_v1() -> None:
    spec = SandboxDeployment.model_validate(workload_doc()).to_k8s()["spec"]
    assert spec["replicas"] == 1
    assert spec["revisionHistoryLimit"] == 10
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
    }
    assert "autoscaling" not in spec


def test_selector_must_match_template_labels() -> None:
    doc = workload_doc()
    doc["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    with pytest.raises(ValidationError, match="does not match"):
        SandboxReplicaSet.model_validate(doc)
    doc["spec"]["selector"] = {}
    with pytest.raises(ValidationError, match="must not be empty"):
        SandboxReplicaSet.model_validate(doc)


def test_template_must_not_be_bound() -> None:
    doc = workload_doc()
    doc["spec"]["template"]["spec"]["podName"] = "pool-0"
    with pytest.raises(ValidationError, match="podName"):
        SandboxDeployment.model_validate(doc)


def test_replicas_may_be_zero_but_not_negative() -> None:
    assert SandboxReplicaSet.model_validate(workload_doc(replicas=0)).spec.replicas == 0
    with pytest.raises(ValidationError, match="replicas"):
        SandboxReplicaSet.model_validate(workload_doc(replicas=-1))


@pytest.mark.parametrize(
    ("surge", "unavailable", "ok"),
    [("25%", "25%", True), (1, 0, True), (0, "0%", False), ("0%", 0, False), ("x%", 1, False)],
)
def test_rolling_update_bounds(surge: object, unavailable: object, ok: bool) -> None:
    doc = {"maxSurge": surge, "maxUnavailable": unavailable}
    if ok:
        assert RollingUpdate.model_validate(doc).to_k8s() == doc
    else:
        with pytest.raises(ValidationError):
            RollingUpdate.model_validate(doc)


def test_autoscaling_defaults_and_limits() -> None:
    scaling = Autoscaling(max_replicas=5)
    assert (scaling.min_replicas, scaling.target_utilization) == (0, 0.7)
    assert (scaling.stable_window_seconds, scaling.panic_window_seconds) == (60, 6)
    assert Autoscaling(max_replicas=5, target_utilization=1).target_utilization == 1
    for bad in (
        {"maxReplicas": 5, "targetUtilization": 0},
        {"maxReplicas": 5, "targetUtilization": 1.01},
        {"maxReplicas": 2, "minReplicas": 3},
        {"maxReplicas": 2, "panicWindowSeconds": 61},
        {"minReplicas": 1},
    ):
        with pytest.raises(ValidationError):
            Autoscaling.model_validate(bad)


def test_endpoint_counts_follow_the_lists() -> None:
    address = EndpointAddress(sandbox="s-1", uid="u1", pod_name="pool-0", pod_ip="10.0.0.1")
    endpoints = SandboxEndpoints.model_validate(
        {"metadata": {"name": "f"}, "status": {"ready": [address.to_k8s()], "readyCount": 7}}
    )
    assert endpoints.status.ready_count == 1
    endpoints.status.not_ready.append(address)
    wire = endpoints.to_k8s()["status"]
    assert (wire["readyCount"], wire["notReadyCount"]) == (1, 1)
    assert "spec" not in endpoints.to_k8s()


def test_label_selector_semantics_and_string_form() -> None:
    selector = LabelSelector(
        match_labels={"app": "f"},
        match_expressions=[
            LabelSelectorRequirement.model_validate(
                {"key": "tier", "operator": "In", "values": ["a", "b"]}
            ),
            LabelSelectorRequirement.model_validate({"key": "canary", "operator": "DoesNotExist"}),
        ],
    )
    assert selector.matches({"app": "f", "tier": "a"})
    assert not selector.matches({"app": "f", "tier": "c"})
    assert not selector.matches({"app": "f", "tier": "a", "canary": "1"})
    assert not selector.matches({"tier": "a"})
    assert selector.to_selector_string() == "app=f,tier in (a,b),!canary"


@pytest.mark.parametrize(
    "requirement",
    [{"key": "k", "operator": "In"}, {"key": "k", "operator": "Exists", "values": ["v"]}],
)
def test_selector_requirement_values_must_fit_operator(requirement: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=re.escape(requirement["operator"])):
        LabelSelectorRequirement.model_validate(requirement)


def test_condition_types_are_unique() -> None:
    ready = {"type": "Ready", "status": "True"}
    with pytest.raises(ValidationError, match="duplicate condition types: Ready"):
        SandboxStatus.model_validate({"conditions": [ready, ready]})

"""Function requests → SandboxDeployments, stored objects → views, rollout status and undo."""

from __future__ import annotations

from typing import Any

import pytest

from crds import SandboxDeployment
from crds.constants import FUNCTION_LABEL, REVISION_ANNOTATION, TEMPLATE_HASH_LABEL
from nest_api import convert
from nest_api import models as m
from nest_api.errors import BadRequest, InvalidInput, NotFound, Upstream

FILES = {"main.py": "def handler(event, context):\n    return event\n"}


def create(**extra: Any) -> m.FunctionCreate:
    return m.FunctionCreate.model_validate(
        {"name": "hello", "handler": "main:handler", "files": FILES, **extra}
    )


def stored(dep: SandboxDeployment, **meta: Any) -> dict[str, Any]:
    obj = dep.to_k8s()
    obj["metadata"] = {**obj["metadata"], "uid": "dep-uid", "resourceVersion": "5", **meta}
    return obj


def test_a_function_becomes_a_sandbox_deployment_selecting_its_sandboxes() -> None:
    req = create(isolation="namespace", memory="32Mi", env={"A": "1"}, timeoutSeconds=5)
    dep = convert.deployment_for("ns", req)
    assert dep.metadata == {
        "name": "hello", "namespace": "ns", "labels": {FUNCTION_LABEL: "hello"},
    }  # fmt: skip
    assert dep.spec.replicas == 1
    assert dep.spec.selector.matches(dep.spec.template.metadata.labels)
    function = dep.spec.template.spec.function
    assert function.source.inline == FILES
    assert (function.isolation, function.resources.memory, function.resources.cpu) == (
        "namespace", "32Mi", "100m",
    )  # fmt: skip
    assert function.timeout_seconds == 5 and function.env == {"A": "1"}


def test_an_autoscaled_function_starts_at_its_reserved_instances() -> None:
    dep = convert.deployment_for("ns", create(autoscaling={"maxReplicas": 4}))
    assert dep.spec.replicas == 0
    assert dep.spec.autoscaling is not None and dep.spec.autoscaling.max_replicas == 4
    dep = convert.deployment_for("ns", create(autoscaling={"minReplicas": 2, "maxReplicas": 4}))
    assert dep.spec.replicas == 2


def test_code_by_reference() -> None:
    dep = convert.deployment_for("ns", create(files=None, code={"configMap": {"name": "code"}}))
    source = dep.spec.template.spec.function.source
    assert source.config_map is not None and source.config_map.name == "code"
    assert source.inline is None


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}, "autoscaling"),
        ({"files": None, "code": {"url": "https://x/y.py"}}, "code"),
        ({"files": {"../evil.py": "x"}}, "files.inline"),
        ({"env": {"bad-name": "x"}}, "env"),
    ],
)
def test_invalid_combinations_name_the_field(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        convert.deployment_for("ns", create(**extra))
    assert caught.value.errors[0].field.startswith(field)
    assert field in caught.value.detail


def test_request_model_needs_exactly_one_code_source() -> None:
    with pytest.raises(ValueError, match="exactly one of files"):
        m.FunctionCreate.model_validate({"name": "x", "handler": "main:handler"})


def test_update_replaces_the_function_but_keeps_replicas_and_version() -> None:
    obj = stored(convert.deployment_for("ns", create(replicas=3)))
    update = m.FunctionUpdate.model_validate({"handler": "app:run", "files": {"app.py": "x=1"}})
    result = convert.updated_deployment(obj, update)
    assert result["metadata"]["resourceVersion"] == "5"
    assert result["spec"]["replicas"] == 3
    assert result["spec"]["template"]["spec"]["function"]["handler"] == "app:run"
    assert result["spec"]["selector"] == obj["spec"]["selector"]


def _replicaset(revision: int, handler: str, owner: str = "dep-uid") -> dict[str, Any]:
    dep = convert.deployment_for("ns", create(handler=handler))
    template = dep.spec.template.to_k8s()
    template["metadata"]["labels"][TEMPLATE_HASH_LABEL] = f"h{revision}"
    return {
        "apiVersion": "nest.sandbox.dev/v1alpha1",
        "kind": "SandboxReplicaSet",
        "metadata": {
            "name": f"hello-h{revision}",
            "annotations": {REVISION_ANNOTATION: str(revision)},
            "ownerReferences": [{"uid": owner}],
        },
        "spec": {"replicas": 1, "selector": dep.spec.selector.to_k8s(), "template": template},
    }


def test_undo_writes_back_the_previous_revision_without_its_hash() -> None:
    obj = stored(convert.deployment_for("ns", create(handler="main:v3")))
    obj["metadata"]["annotations"] = {REVISION_ANNOTATION: "3"}
    sets = [_replicaset(3, "main:v3"), _replicaset(1, "main:v1"), _replicaset(2, "main:v2"),
            _replicaset(9, "main:other", owner="someone-else")]  # fmt: skip
    template, revision = convert.undo_template(obj, sets, None)
    assert revision == 2
    assert template["spec"]["function"]["handler"] == "main:v2"
    assert TEMPLATE_HASH_LABEL not in template["metadata"]["labels"]
    assert convert.undo_template(obj, sets, 1)[0]["spec"]["function"]["handler"] == "main:v1"
    with pytest.raises(NotFound, match="revision 9 not found"):
        convert.undo_template(obj, sets, 9)
    assert [r.revision for r in convert.revisions(obj, sets)] == [1, 2, 3]


def test_undo_without_history_is_a_bad_request() -> None:
    obj = stored(convert.deployment_for("ns", create()))
    with pytest.raises(BadRequest, match="no previous revision"):
        convert.undo_template(obj, [_replicaset(1, "main:handler")], None)


def _status(obj: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], "generation": 2}, "status": status}


@pytest.mark.parametrize(
    ("status", "complete", "message"),
    [
        ({"observedGeneration": 1}, False, "to be observed"),
        ({"observedGeneration": 2, "updatedReplicas": 1, "replicas": 2}, False, "1 of 2 new"),
        ({"observedGeneration": 2, "updatedReplicas": 2, "replicas": 3}, False, "1 old"),
        ({"observedGeneration": 2, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 1},
         False, "1 of 2 sandboxes available"),
        ({"observedGeneration": 2, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 2},
         True, "rolled out"),
    ],
)  # fmt: skip
def test_rollout_status_reads_like_kubectl(
    status: dict[str, Any], complete: bool, message: str
) -> None:
    obj = stored(convert.deployment_for("ns", create(replicas=2)))
    result = convert.rollout_status(_status(obj, **status))
    assert result.complete is complete
    assert message in result.message


def test_rollout_past_its_deadline_has_failed() -> None:
    obj = stored(convert.deployment_for("ns", create()))
    condition = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    result = convert.rollout_status(_status(obj, observedGeneration=2, conditions=[condition]))
    assert result.failed and not result.complete


def test_a_stored_object_that_does_not_fit_is_the_clusters_fault() -> None:
    with pytest.raises(Upstream, match="does not match the API"):
        convert.function_view({"metadata": {"name": "x"}, "spec": {"bogus": 1}}, None)


def test_view_embeds_endpoints_and_scale() -> None:
    obj = stored(convert.deployment_for("ns", create()))
    ready = {"sandbox": "s", "uid": "u", "podName": "p", "podIP": "127.0.0.9", "port": 8080}
    view = convert.function_view(obj, {"status": {"ready": [ready]}})
    assert view.endpoints.ready_count == 1 and view.uid == "dep-uid"
    scale = convert.scale_view({"spec": {"replicas": 2}, "status": {"replicas": 1}})
    assert (scale.replicas, scale.status_replicas) == (2, 1)

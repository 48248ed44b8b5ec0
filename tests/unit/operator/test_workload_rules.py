"""Issue 10's cross-field rules for workloads, one table judged alike by the models and the webhook.

Each row of tests/validation_cases.py (SELECTORS, TEMPLATE_BINDINGS) goes through the pydantic
models of both workload kinds and through the admission rules the operator serves;
tests/integration/test_validation.py sends the same rows to a real API server.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from crds import SandboxDeployment, SandboxReplicaSet
from crds import constants as c
from nest_operator import admission as adm
from nest_operator import admission_specs as specs
from tests.validation_cases import QUANTITIES, SELECTORS, TEMPLATE_BINDINGS

MODELS = {c.REPLICASET_PLURAL: SandboxReplicaSet, c.DEPLOYMENT_PLURAL: SandboxDeployment}
FUNCTION = {"handler": "main:handler", "source": {"inline": {"main.py": "x"}}}
ALICE = adm.User("alice", groups=("system:authenticated",))


def workload(
    selector: dict[str, Any], labels: dict[str, str], **template_spec: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": "w", "namespace": "team"},
        "spec": {
            "replicas": 1,
            "selector": copy.deepcopy(selector),
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"function": copy.deepcopy(FUNCTION), **template_spec},
            },
        },
    }


def review(resource: str, obj: dict[str, Any], old: dict[str, Any] | None = None) -> adm.Verdict:
    request = adm.Request(
        operation=adm.UPDATE if old is not None else adm.CREATE,
        group=c.GROUP,
        resource=resource,
        namespace="team",
        name="w",
        user=ALICE,
        obj=obj,
        old=old,
    )
    return adm.decide(request, adm.Config(), adm.Answers())


def model_accepts(resource: str, obj: dict[str, Any]) -> tuple[bool, str]:
    try:
        MODELS[resource].model_validate(obj)
    except ValidationError as exc:
        return False, str(exc)
    return True, ""


@pytest.mark.parametrize("resource", sorted(MODELS))
@pytest.mark.parametrize(("selector", "labels", "accepted"), SELECTORS)
def test_selector_against_template_labels_one_rule_in_the_models_and_the_webhook(
    resource: str, selector: dict[str, Any], labels: dict[str, str], accepted: bool
) -> None:
    obj = workload(selector, labels)
    model, why = model_accepts(resource, obj)
    assert model is accepted, why
    verdict = review(resource, obj)
    assert verdict.allowed is accepted, verdict.message
    if not accepted:
        assert "selector" in why
        assert verdict.message.startswith("spec.selector: ")


def test_a_mismatch_is_refused_showing_both_the_selector_and_the_labels() -> None:
    verdict = review(c.REPLICASET_PLURAL, workload({"matchLabels": {"app": "a"}}, {"app": "b"}))
    assert verdict.message == (
        'spec.selector: "app=a" does not match the template\'s labels {"app": "b"}: '
        "the Sandboxes it creates would not be its own"
    )


def test_an_invalid_clause_is_refused_naming_it() -> None:
    selector = {"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}
    verdict = review(c.DEPLOYMENT_PLURAL, workload(selector, {"app": "a"}))
    assert verdict.message == (
        "spec.selector: matchExpressions.0: operator In needs at least one value"
    )


def test_a_workload_stored_before_the_rule_can_still_be_scaled_but_not_newly_broken() -> None:
    legacy = workload({"matchLabels": {"app": "a"}}, {"app": "b"})
    scaled = copy.deepcopy(legacy)
    scaled["spec"]["replicas"] = 0
    assert review(c.REPLICASET_PLURAL, scaled, old=legacy).allowed
    good = workload({"matchLabels": {"app": "a"}}, {"app": "a"})
    relabelled = copy.deepcopy(good)
    relabelled["spec"]["template"]["metadata"]["labels"] = {"app": "c"}
    verdict = review(c.REPLICASET_PLURAL, relabelled, old=good)
    assert verdict.message.startswith('spec.selector: "app=a" does not match')


@pytest.mark.parametrize("resource", sorted(MODELS))
@pytest.mark.parametrize(("labels", "spec", "field"), TEMPLATE_BINDINGS)
def test_a_template_that_binds_is_refused_by_the_models_and_the_webhook_naming_the_field(
    resource: str, labels: dict[str, str], spec: dict[str, str], field: str
) -> None:
    obj = workload({"matchLabels": {"app": "a"}}, {"app": "a", **labels}, **spec)
    model, why = model_accepts(resource, obj)
    assert not model
    assert f"{field.removeprefix('spec.template.')}: {adm.TEMPLATE_BINDS}" in why
    assert review(resource, obj).message == f"{field}: {adm.TEMPLATE_BINDS}"


def test_every_problem_of_a_workload_is_named_at_once() -> None:
    obj = workload({"matchLabels": {"app": "a"}}, {"app": "b"})
    obj["spec"]["template"]["spec"]["function"]["env"] = {"1BAD": "x"}
    message = review(c.DEPLOYMENT_PLURAL, obj).message
    assert message.startswith("spec.selector: ")
    assert "; spec.template.spec.function.env[1BAD]: " in message


# -- quantities: the door's check of the schema's promise ---------------------------------------


@pytest.mark.parametrize(("value", "accepted"), QUANTITIES, ids=[repr(q) for q, _ in QUANTITIES])
def test_the_webhook_reads_quantities_as_the_table_says(value: Any, accepted: bool) -> None:
    # The schema refuses the bad rows before the webhook sees them; the webhook agrees anyway,
    # except where the schema is stricter than the parser: a sign, a space, a long exponent.
    problems = specs.quantity_problems({"memory": value, "cpu": value})
    parser_laxer = value in ("+1Gi", "1 Gi", "1e1234")
    assert (problems == []) is (accepted or parser_laxer)
    if problems:
        assert [name for name, _ in problems] == ["memory", "cpu"]


def test_a_quantity_the_parser_refuses_is_refused_naming_the_field() -> None:
    sandbox = {"metadata": {"name": "s"}, "spec": {"function": {**FUNCTION}}}
    sandbox["spec"]["function"]["resources"] = {"memory": "1e.5", "cpu": "-1"}
    verdict = review(c.SANDBOX_PLURAL, sandbox)
    assert verdict.message == (
        "spec.function.resources.memory: '1e.5' is not a positive quantity as Kubernetes' "
        "parser reads it; spec.function.resources.cpu: '-1' is not a positive quantity as "
        "Kubernetes' parser reads it"
    )


@pytest.mark.parametrize(
    ("labels", "refused"),
    [
        ({c.FUNCTION_LABEL: "bar"}, True),  # the operator labels foo's sandboxes function=foo
        ({c.FUNCTION_LABEL: "foo"}, False),
        ({"app": "x"}, False),
    ],
)
def test_a_deployment_template_naming_another_function_is_refused(
    labels: dict[str, str], refused: bool
) -> None:
    body = {"metadata": {"name": "foo"}, "spec": {"template": {"metadata": {"labels": labels}}}}
    problems = specs.function_label_problems(body, None)
    assert bool(problems) is refused
    if refused:
        assert problems[0][0] == f'spec.template.metadata.labels["{c.FUNCTION_LABEL}"]'
    assert specs.function_label_problems(body, body) == []  # unchanged labels: never newly refused

"""The pydantic → Kubernetes schema conversion emits only structural, 1.20-compatible schemas."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import BaseModel, Field

from crds import Sandbox, SandboxDeployment, SandboxEndpoints, SandboxPool, SandboxReplicaSet
from crds.common import QUANTITY_PATTERN, NestModel, Quantity
from crds.errors import SchemaError
from crds.schema import ALLOWED_KEYWORDS, check_structural, model_schema

KINDS = [Sandbox, SandboxReplicaSet, SandboxDeployment, SandboxEndpoints, SandboxPool]


def all_nodes(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node, including junctor branches."""
    found = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        found += all_nodes(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            found += all_nodes(node[key], f"{path}<{key}>")
    for key in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(key, [])):
            found += all_nodes(sub, f"{path}<{key}{i}>")
    return found


def at(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    for name in dotted.split("."):
        schema = schema["properties"][name]
    return schema


@pytest.mark.parametrize("model", KINDS)
def test_every_node_uses_only_kubernetes_keywords(model: type[BaseModel]) -> None:
    for path, node in all_nodes(model_schema(model)):
        assert set(node) <= ALLOWED_KEYWORDS, path
        assert "$ref" not in node and "title" not in node and "const" not in node, path
        assert node.get("type") != "null", path
        # Only where "" is a valid value: Kubernetes 1.20 takes "" for null without it.
        if "nullable" in node:
            assert path.endswith(("inline<additionalProperties>", "env<additionalProperties>"))
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


@pytest.mark.parametrize("model", KINDS)
def test_every_property_is_typed_and_described(model: type[BaseModel]) -> None:
    schema = model_schema(model)
    check_structural(schema)
    for path, node in all_nodes(schema):
        for name, prop in node.get("properties", {}).items():
            assert prop.get("description"), f"{path}.{name}"
            typed = "type" in prop or prop.get("x-kubernetes-int-or-string")
            assert typed or prop.get("x-kubernetes-preserve-unknown-fields"), f"{path}.{name}"


def test_optional_fields_become_plain_optional_properties() -> None:
    spec = at(model_schema(Sandbox), "spec")
    assert spec["properties"]["podName"] == {
        "description": spec["properties"]["podName"]["description"],
        "type": "string",
        "minLength": 1,
        "maxLength": 253,
    }
    assert "podName" not in spec["required"]


def test_quantities_are_int_or_string_as_controller_gen_writes_them() -> None:
    memory = at(model_schema(Sandbox), "spec.function.resources.memory")
    assert memory["x-kubernetes-int-or-string"] is True
    assert memory["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert memory["pattern"] == QUANTITY_PATTERN and memory["minimum"] == 1
    assert memory["default"] == "64Mi"
    assert "type" not in memory


def test_code_source_is_exactly_one_of_required_lists() -> None:
    source = at(model_schema(Sandbox), "spec.function.source")
    assert source["oneOf"] == [
        {"required": ["inline"]},
        {"required": ["configMap"]},
        {"required": ["url", "sha256"]},
        {"required": ["path"]},
        {"required": ["oci"]},
        {"required": ["build"]},
    ]


def test_exclusive_bounds_use_the_openapi_3_0_form() -> None:
    utilization = at(model_schema(SandboxDeployment), "spec.autoscaling.targetUtilization")
    assert (utilization["minimum"], utilization["exclusiveMinimum"]) == (0, True)
    assert utilization["maximum"] == 1 and "exclusiveMaximum" not in utilization


def test_maps_and_free_form_objects() -> None:
    env = at(model_schema(Sandbox), "spec.function.env")
    assert env["additionalProperties"] == {"type": "string", "nullable": True}
    metadata = at(model_schema(Sandbox), "metadata")
    assert metadata["x-kubernetes-preserve-unknown-fields"] is True


def test_conditions_merge_by_type() -> None:
    conditions = at(model_schema(SandboxDeployment), "status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: parents first, then into the values."""
    if isinstance(value, dict) and "properties" in schema:
        for name, prop in schema["properties"].items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                value[name] = apply_defaults(prop, value[name])
    elif isinstance(value, list) and "items" in schema:
        value = [apply_defaults(schema["items"], item) for item in value]
    return value


def without_empty_collections(value: Any) -> Any:
    if isinstance(value, dict):
        pruned = {k: without_empty_collections(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ({}, [])}
    return value


@pytest.mark.parametrize(
    ("model", "minimal"),
    [
        (Sandbox, {"spec": {"function": {"handler": "m:f", "source": {"path": "/x"}}}}),
        (
            SandboxDeployment,
            {
                "spec": {
                    "selector": {"matchLabels": {"a": "b"}},
                    "template": {
                        "metadata": {"labels": {"a": "b"}},
                        "spec": {"function": {"handler": "m:f", "source": {"path": "/x"}}},
                    },
                    "autoscaling": {"maxReplicas": 3},
                }
            },
        ),
        (SandboxEndpoints, {}),
        (SandboxPool, {"spec": {"podNamespace": "nest-system", "podSelector": {}}}),
    ],
)
def test_server_defaults_equal_model_defaults(
    model: type[NestModel], minimal: dict[str, Any]
) -> None:
    # Objects read through kubectl and through the models must agree; only empty lists/maps
    # (which the models fill in and the server leaves absent) may differ.
    from_server = apply_defaults(model_schema(model), copy.deepcopy(minimal))
    from_model = model.model_validate(minimal).to_k8s()
    assert without_empty_collections(from_server) == without_empty_collections(from_model)


class _Untyped(BaseModel):
    value: int | str = Field(description="a union Kubernetes cannot express")


class _OptionalUnion(BaseModel):
    value: int | str | None = Field(default=None, description="still a union")


class _Undescribed(BaseModel):
    size: Quantity


def test_unions_other_than_optional_are_refused() -> None:
    with pytest.raises(SchemaError, match="needs a type"):
        model_schema(_Untyped)
    with pytest.raises(SchemaError, match="union"):
        model_schema(_OptionalUnion)


def test_missing_descriptions_are_refused() -> None:
    with pytest.raises(SchemaError, match="size"):
        model_schema(_Undescribed)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "object", "properties": {"a": {"description": "x"}}}, "type"),
        ({"type": "object", "title": "T"}, "not allowed"),
        ({"$ref": "#/$defs/X"}, "not allowed"),
        ({"type": "array"}, "items"),
        (
            {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "exclusive",
        ),
        ({"type": "object", "properties": {}, "required": ["ghost"]}, "undeclared"),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "oneOf": [{"type": "object", "required": ["a"]}],
            },
            "inside",
        ),
        (
            {"type": "object", "properties": {}, "oneOf": [{"required": ["ghost"]}]},
            "undeclared",
        ),
        ({"x-kubernetes-int-or-string": True, "type": "string"}, "int-or-string"),
        (
            {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["k"],
                "items": {"type": "object", "properties": {"k": {"type": "string"}}},
            },
            "list-map key",
        ),
    ],
)
def test_non_structural_schemas_are_refused(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        check_structural(schema)

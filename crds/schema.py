"""Turn a pydantic model into a Kubernetes structural OpenAPI v3 schema.

pydantic emits JSON Schema 2020-12; the API server accepts a restricted OpenAPI v3.0 dialect:
no `$ref`, no `null` type, no `const`, boolean `exclusiveMinimum`, every node typed, and logical
junctors (`oneOf`, `anyOf`, ...) that only add value checks. This module bridges the two so the
models stay the single source of truth for the CRDs and, later, for the gateway's OpenAPI
document. It is strict on purpose: a keyword it does not understand is an error, not something
to pass through for the API server to reject (or, worse, silently drop) at install time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, NoDefault
from pydantic_core import core_schema

from crds.errors import SchemaError

# Output order of the keywords of one node, so the YAML is stable and reads top-down.
KEYWORD_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "nullable",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "items",
    "additionalProperties",
    "properties",
    "required",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
)
ALLOWED_KEYWORDS = frozenset(KEYWORD_ORDER)
JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
# Structural schemas forbid these inside junctors: they would make the shape ambiguous.
FORBIDDEN_IN_JUNCTORS = frozenset(
    {"description", "type", "default", "additionalProperties", "nullable"}
)
# pydantic keywords that carry nothing Kubernetes can use.
DROPPED_KEYWORDS = frozenset({"title"})
INT_OR_STRING_BRANCHES = [{"type": "integer"}, {"type": "string"}]


class _KubernetesJsonSchema(GenerateJsonSchema):
    """pydantic's generator, plus `default: {}` for nested models built by a default factory.

    `Field(default_factory=Resources)` means "an object with every nested default"; written as
    `default: {}` the API server applies the nested defaults itself, so a stored object reads the
    same through kubectl as through the models.
    """

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if isinstance(factory, type) and issubclass(factory, BaseModel):
            return {}
        return super().get_default_value(schema)


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of `model`, with wire (alias) names; raises SchemaError."""
    raw = model.model_json_schema(
        by_alias=True, mode="validation", schema_generator=_KubernetesJsonSchema
    )
    defs: dict[str, Any] = raw.pop("$defs", {})
    schema = _convert(raw, defs, model.__name__)
    check_structural(schema)
    check_descriptions(schema)
    return schema


def _convert(node: JsonSchemaValue, defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        name = node.pop("$ref").removeprefix("#/$defs/")
        if name not in defs:
            raise SchemaError(f"{path}: unresolved reference {name!r}")
        # Siblings of $ref (the field's own description/default) win over the referenced type's.
        return _convert({**defs[name], **node}, defs, path)
    if "anyOf" in node and {"type": "null"} in node["anyOf"]:
        node = _drop_null(node, path)
        return _convert(node, defs, path)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROPPED_KEYWORDS:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema's numeric form; OpenAPI 3.0 wants the bound plus a boolean flag.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: _convert(sub, defs, f"{path}.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, f"{path}[]")
        elif key in JUNCTORS[:3]:
            out[key] = [_convert(sub, defs, f"{path}<{key}>") for sub in value]
        elif key == "not":
            out[key] = _convert(value, defs, f"{path}<not>")
        elif key == "additionalProperties":
            _convert_additional(out, value, defs, path)
        elif key not in ALLOWED_KEYWORDS:
            raise SchemaError(f"{path}: keyword {key!r} has no Kubernetes equivalent")
        elif key == "default" and isinstance(value, float) and value.is_integer():
            # The API server stores 2.0 as 2; writing it that way keeps a live CRD identical.
            out[key] = int(value)
        else:
            # Copied so that two uses of one definition never share a list (YAML anchors).
            out[key] = copy.deepcopy(value)
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        # An object with no declared shape (`dict[str, Any]`, `dict`): keep what users store,
        # where the API server would otherwise prune every key.
        out["x-kubernetes-preserve-unknown-fields"] = True
    return _ordered(out)


def _drop_null(node: dict[str, Any], path: str) -> dict[str, Any]:
    """`X | None` means "may be omitted" on the wire: Kubernetes has no null type."""
    branches = [b for b in node.pop("anyOf") if b != {"type": "null"}]
    if node.get("default", NoDefault) is None:
        del node["default"]
    if len(branches) == 1:
        return {**branches[0], **node}
    raise SchemaError(f"{path}: a union of several types cannot be structural")


def _convert_additional(out: dict[str, Any], value: Any, defs: dict[str, Any], path: str) -> None:
    if value is False:
        # Pruning already discards unknown fields, and apiextensions/v1 rejects `false`
        # next to `properties`; pydantic's `extra="forbid"` still rejects them client-side.
        return
    if value is True or value == {}:
        out["x-kubernetes-preserve-unknown-fields"] = True
        out.setdefault("type", "object")
        return
    out["additionalProperties"] = _convert(value, defs, f"{path}{{}}")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    return {key: node[key] for key in KEYWORD_ORDER if key in node}


def check_structural(schema: dict[str, Any], path: str = "") -> None:
    """Raise SchemaError unless `schema` is structural in the sense of apiextensions/v1.

    Checks what Kubernetes 1.20 enforces and what the conversion above could get wrong: only
    known keywords, every node typed (or int-or-string / preserve-unknown-fields), no shape in
    junctor branches, `properties` and `additionalProperties` exclusive, arrays with items,
    `required` naming declared properties, list-map keys that are required.
    """
    _check_node(schema, path or "<root>", in_junctor=False)


def _check_node(node: dict[str, Any], path: str, *, in_junctor: bool) -> None:
    unknown = set(node) - ALLOWED_KEYWORDS
    if unknown:
        raise SchemaError(f"{path}: keywords not allowed by Kubernetes: {sorted(unknown)}")
    if in_junctor:
        bad = FORBIDDEN_IN_JUNCTORS & set(node)
        if bad and not _is_int_or_string_branch(node):
            raise SchemaError(f"{path}: {sorted(bad)} not allowed inside oneOf/anyOf/allOf/not")
    else:
        _check_shape(node, path)
    for name, sub in node.get("properties", {}).items():
        _check_node(sub, f"{path}.{name}", in_junctor=in_junctor)
    for key, child_path in (("items", "[]"), ("additionalProperties", "{}")):
        if isinstance(node.get(key), dict):
            _check_node(node[key], f"{path}{child_path}", in_junctor=in_junctor)
    for junctor in JUNCTORS:
        branches = node.get(junctor)
        if branches is None:
            continue
        for i, sub in enumerate(branches if isinstance(branches, list) else [branches]):
            sub_path = f"{path}<{junctor}{i}>"
            _check_node(sub, sub_path, in_junctor=True)
            _check_required_declared(sub, node.get("properties", {}), sub_path)


def _is_int_or_string_branch(node: dict[str, Any]) -> bool:
    return node in INT_OR_STRING_BRANCHES


def _check_shape(node: dict[str, Any], path: str) -> None:
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if int_or_string:
        if "type" in node or node.get("anyOf") not in (None, INT_OR_STRING_BRANCHES):
            raise SchemaError(f"{path}: int-or-string takes no type, only anyOf integer/string")
    elif "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        raise SchemaError(f"{path}: every node needs a type")
    if "properties" in node and "additionalProperties" in node:
        raise SchemaError(f"{path}: properties and additionalProperties are exclusive")
    if node.get("type") == "array" and "items" not in node:
        raise SchemaError(f"{path}: an array needs items")
    if "nullable" in node and node["nullable"] is not True:
        raise SchemaError(f"{path}: nullable is only ever true")
    _check_required_declared(node, node.get("properties", {}), path)
    if node.get("x-kubernetes-list-type") == "map":
        items = node.get("items", {})
        for key in node.get("x-kubernetes-list-map-keys", []):
            item = items.get("properties", {}).get(key, {})
            if key not in items.get("required", []) and "default" not in item:
                raise SchemaError(f"{path}: list-map key {key!r} must be required or defaulted")


def _check_required_declared(node: dict[str, Any], properties: dict[str, Any], path: str) -> None:
    missing = [name for name in node.get("required", []) if name not in properties]
    if missing:
        raise SchemaError(f"{path}: required names undeclared properties {missing}")


def check_descriptions(schema: dict[str, Any]) -> None:
    """Raise SchemaError naming every property without a description.

    `kubectl explain` and the gateway's OpenAPI document show these to users; a field nobody
    described is a field nobody can use correctly.
    """
    missing: list[str] = []

    def visit(path: str, node: dict[str, Any]) -> None:
        missing.extend(
            f"{path}.{name}"
            for name, sub in node.get("properties", {}).items()
            if not sub.get("description")
        )

    walk(schema, visit)
    if missing:
        raise SchemaError(f"properties without a description: {', '.join(missing)}")


def walk(
    schema: dict[str, Any], visit: Callable[[str, dict[str, Any]], None], path: str = ""
) -> None:
    """Call `visit(path, node)` for every node of a converted schema, parents first."""
    visit(path, schema)
    for name, sub in schema.get("properties", {}).items():
        walk(sub, visit, f"{path}.{name}")
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        if isinstance(schema.get(key), dict):
            walk(schema[key], visit, f"{path}{suffix}")

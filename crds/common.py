"""Building blocks shared by the four kinds: the wire conventions and Kubernetes' common shapes.

Every Nest object is read and written by several components (operator, sidecar, gateway, CLI);
`NestModel` pins the wire format once: camelCase names on the wire, snake_case in Python, unknown
fields rejected so a typo in a manifest fails loudly instead of being silently pruned. The other
types mirror apimachinery's (quantities, int-or-percent, conditions, label selectors) so the
objects read like any other Kubernetes object and the generated schema validates them the way
the API server validates built-in kinds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    model_validator,
)

# A positive Kubernetes quantity, and the one grammar both the CRD schema and the models check.
# apimachinery's grammar without a sign (a negative limit made a pool pod unschedulable for
# everyone), with a decimal exponent that is an integer of at most three digits ("1e3", not
# "1e.5": apimachinery's parser and the kubernetes client's parse_quantity refuse that, and
# larger exponents overflow them), and with a non-zero digit somewhere in the number: zero
# ("0", "0.0", "00Mi") is no limit Nest can honour. The first branch has a non-zero digit before
# the point, the second after it. Only RE2 constructs (no lookahead): the API server is Go.
QUANTITY_PATTERN = (
    r"^(([0-9]*[1-9][0-9]*(\.[0-9]*)?)|([0-9]*\.[0-9]*[1-9][0-9]*))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]{1,3}))?$"
)
PERCENT_PATTERN = r"^[0-9]+%$"
# A qualified name as Kubernetes validates label keys and values loosely; enough to catch typos.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# metav1.Condition's reason grammar: CamelCase identifiers that machines can switch on.
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
_PERCENT_RE = re.compile(PERCENT_PATTERN)


# Kubernetes keeps acronyms upper-case on the wire (podIP, hostIP), which to_camel would not.
_ACRONYMS = {"ip": "IP"}


def wire_name(name: str) -> str:
    """The camelCase wire name of a snake_case attribute: `pod_ip` -> `podIP`."""
    first, *rest = name.split("_")
    return first + "".join(_ACRONYMS.get(word, word.capitalize()) for word in rest)


class NestModel(BaseModel):
    """Base of every Nest API model: Kubernetes wire names, strict about unknown fields."""

    model_config = ConfigDict(
        alias_generator=wire_name,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
    )

    def to_k8s(self) -> dict[str, Any]:
        """The object as the API server expects it: camelCase, JSON types, unset optionals omitted.

        For a partial merge patch use `model_dump(mode="json", exclude_unset=True)` instead:
        defaults such as an empty `conditions` list would otherwise overwrite what is stored.
        """
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, int):
        if value < 1:
            raise ValueError("a quantity must be positive")
        return value
    if not _QUANTITY_RE.fullmatch(value):  # Python's $ also matches before a final newline
        raise ValueError(
            f"{value!r} is not a positive Kubernetes quantity without a sign "
            "(e.g. '64Mi', '0.5', '100m')"
        )
    return value


def _check_int_or_percent(value: int | str) -> int | str:
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if not _PERCENT_RE.fullmatch(value):
        raise ValueError(f"{value!r} is neither an integer nor a percentage such as '25%'")
    return value


# Kubernetes' schema for int-or-string fields, as controller-gen writes it; the pattern applies
# to the string form only (OpenAPI patterns ignore integers), the minimum to the integer form.
# Strict int/str because the API server rejects a YAML float (`cpu: 0.5`) or a boolean here too.
Quantity = Annotated[
    StrictInt | StrictStr,
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "minimum": 1,
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]

IntOrPercent = Annotated[
    StrictInt | StrictStr,
    AfterValidator(_check_int_or_percent),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": PERCENT_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]


class ConditionStatus(StrEnum):
    """Whether a condition holds, as in metav1.Condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Condition(NestModel):
    """One aspect of an object's state, shaped like metav1.Condition."""

    type: str = Field(
        min_length=1,
        max_length=316,
        description="Condition type, CamelCase (e.g. Ready, Scheduled, Available).",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str | None = Field(
        default=None,
        max_length=1024,
        pattern=REASON_PATTERN,
        description="CamelCase, machine-readable cause of the last transition.",
    )
    message: str | None = Field(
        default=None, max_length=32768, description="Human-readable details of the transition."
    )
    last_transition_time: datetime = Field(
        default_factory=_now, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was computed from."
    )
    last_update_time: datetime | None = Field(
        default=None,
        description="When the condition was last asserted, even unchanged (RFC 3339); "
        "progress deadlines are measured from it, as in apps/v1 DeploymentCondition.",
    )


def _unique_types(conditions: list[Condition]) -> list[Condition]:
    # Kubernetes 1.20 does not enforce list-map keys' uniqueness; the models do.
    types = [c.type for c in conditions]
    duplicates = sorted({t for t in types if types.count(t) > 1})
    if duplicates:
        raise ValueError(f"duplicate condition types: {', '.join(duplicates)}")
    return conditions


Conditions = Annotated[list[Condition], AfterValidator(_unique_types)]


def conditions_field(description: str) -> Any:
    """A `conditions` list keyed by `type`, so server-side apply merges it per condition."""
    return Field(
        default_factory=list,
        description=description,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class SelectorOperator(StrEnum):
    """Operator of a label selector requirement, as in metav1.LabelSelectorRequirement."""

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(NestModel):
    """One `key operator values` clause of a label selector."""

    key: str = Field(min_length=1, max_length=317, description="Label key the clause applies to.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[str] = Field(
        default_factory=list,
        description="Values for In and NotIn (non-empty); must be empty for Exists/DoesNotExist.",
    )

    @model_validator(mode="after")
    def _values_match_operator(self) -> LabelSelectorRequirement:
        wants_values = self.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN)
        if wants_values and not self.values:
            raise ValueError(f"operator {self.operator.value} needs at least one value")
        if not wants_values and self.values:
            raise ValueError(f"operator {self.operator.value} takes no values")
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether `labels` satisfy this clause."""
        match self.operator:
            case SelectorOperator.IN:
                return labels.get(self.key) in self.values
            case SelectorOperator.NOT_IN:
                return labels.get(self.key) not in self.values
            case SelectorOperator.EXISTS:
                return self.key in labels
            case SelectorOperator.DOES_NOT_EXIST:
                return self.key not in labels

    def to_selector_string(self) -> str:
        """The clause in kubectl's `-l` syntax."""
        match self.operator:
            case SelectorOperator.IN:
                return f"{self.key} in ({','.join(self.values)})"
            case SelectorOperator.NOT_IN:
                return f"{self.key} notin ({','.join(self.values)})"
            case SelectorOperator.EXISTS:
                return self.key
            case SelectorOperator.DOES_NOT_EXIST:
                return f"!{self.key}"


class LabelSelector(NestModel):
    """Selects objects by labels, as metav1.LabelSelector; all clauses must hold."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels that must be present with exactly these values."
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, description="Further clauses, all of which must hold."
    )

    def is_empty(self) -> bool:
        """An empty selector selects everything, which no workload may use."""
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an object with `labels` is selected."""
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            r.matches(labels) for r in self.match_expressions
        )

    def to_selector_string(self) -> str:
        """The selector in kubectl's `-l` syntax: what `status.selector` holds for `scale`."""
        clauses = [f"{k}={v}" for k, v in sorted(self.match_labels.items())]
        clauses += [r.to_selector_string() for r in self.match_expressions]
        return ",".join(clauses)


class TemplateMetadata(NestModel):
    """The metadata a template stamps onto the objects it creates."""

    labels: dict[str, str] = Field(
        default_factory=dict, description="Labels of created objects; must match the selector."
    )
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations of created objects."
    )

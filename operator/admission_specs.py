"""What the CRD schema cannot say about a spec, checked at the door with the models' own rules.

Why it exists: Kubernetes 1.20 has no CEL, so its schemas validate no map keys, no byte sizes
and no relation between two fields. The models (crds/) hold those rules; the admission webhook
applies the very same functions here, so kubectl, GitOps tools and the gateway are refused what
the models refuse, with the field named (`spec.selector: ...`,
`spec.template.spec.function.env[1BAD]: ...`). These are pure functions over the request's
objects, returning (field, why) pairs that admission.py turns into the webhook's verdict; unlike
the rest of admission they do not depend on who is asking.

On UPDATE each rule looks only at what the change touches, so an object stored before a rule
existed can still be scaled, bound, finalized and deleted; its controller reports what is wrong
with it instead (a replica set's `ReplicaFailure`).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity
from pydantic import ValidationError

from crds.common import LabelSelector
from crds.constants import FUNCTION_LABEL
from crds.validation import env_problems, inline_problems
from crds.workloads import selector_problem

Obj = Mapping[str, Any]
Problems = list[tuple[str, str]]
SELECTOR = "spec.selector"


def _spec(obj: Obj | None) -> Obj:
    return (obj or {}).get("spec") or {}


def _template(obj: Obj | None) -> Obj:
    return _spec(obj).get("template") or {}


def _template_labels(obj: Obj | None) -> Obj:
    return (_template(obj).get("metadata") or {}).get("labels") or {}


def function_of(obj: Obj | None, templated: bool) -> Obj:
    """`spec.function` of a Sandbox, or `spec.template.spec.function` of a workload."""
    spec = _spec(_template(obj)) if templated else _spec(obj)
    function: Obj = spec.get("function") or {}
    return function


def errors_of(exc: ValidationError) -> list[str]:
    """pydantic's errors as `where: why`, without its "Value error, " prefix."""
    out = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        why = error["msg"].removeprefix("Value error, ")
        out.append(f"{where}: {why}" if where else why)
    return out


def selector_problems(new: Obj, old: Obj | None) -> Problems:
    """A SandboxReplicaSet's or SandboxDeployment's selector must be valid, not empty, and
    match its template's labels (`crds.workloads.selector_problem`, as apps/v1 requires):
    otherwise its replica set could own none of the Sandboxes it creates.

    On update only a change of the selector or of the template's labels is checked.
    """
    raw, labels = _spec(new).get("selector") or {}, _template_labels(new)
    if old is not None and (_spec(old).get("selector") or {}, _template_labels(old)) == (
        raw,
        labels,
    ):
        return []
    try:
        selector = LabelSelector.model_validate(raw)
    except ValidationError as exc:
        return [(SELECTOR, why) for why in errors_of(exc)]
    why = selector_problem(selector, {str(k): str(v) for k, v in labels.items()})
    return [(SELECTOR, why)] if why is not None else []


def function_label_problems(new: Obj, old: Obj | None) -> Problems:
    """A SandboxDeployment's sandboxes are its function's: the operator labels every one
    `nest.sandbox.dev/function: <deployment name>`, so a template that says another function
    would make a selector on that label match none of them (its replica sets would create
    sandboxes they cannot own). Checked when the template's labels change."""
    labels = _template_labels(new)
    if old is not None and _template_labels(old) == labels:
        return []
    name = str((new.get("metadata") or {}).get("name") or "")
    value = labels.get(FUNCTION_LABEL)
    if value is None or not name or str(value) == name:
        return []
    field = f'spec.template.metadata.labels["{FUNCTION_LABEL}"]'
    return [(field, f"is {value!r}, but this deployment's sandboxes are function {name!r}")]


def quantity_problems(resources: Obj) -> Problems:
    """Quantities that the parser every Nest component sums them with (the kubernetes client's
    `parse_quantity`) refuses or reads as no more than zero, as (memory|cpu, why).

    The schema's pattern admits only quantities this parser reads as positive (a property test
    in tests/unit/crds holds the two together), so on a real API server this never fires: it is
    the door's own check of that promise, so that nothing this parser cannot read is stored
    (the scheduler logged a ValueError every 15 s for `1e.5`, and the sandbox stayed Pending).
    """
    problems = []
    for name in ("memory", "cpu"):
        value = resources.get(name)
        if value is None:
            continue
        try:
            parsed: Decimal = parse_quantity(value)
            positive = bool(parsed > 0)
        except (ValueError, TypeError, ArithmeticError):
            positive = False
        if not positive:
            why = f"{value!r} is not a positive quantity as Kubernetes' parser reads it"
            problems.append((name, why))
    return problems


def function_problems(new: Obj, old: Obj, prefix: str) -> Problems:
    """What the schema cannot say about a function: inline file names, contents and sizes, env
    names (by the models' `inline_problems`/`env_problems`), and that its quantities parse.

    `prefix` is where the function is (`spec.function`, `spec.template.spec.function`); `old` is
    the stored function on update ({} on create): only a changed `source`, `env` or `resources`
    is checked.
    """
    problems: Problems = []
    source, env = new.get("source") or {}, new.get("env") or {}
    resources = new.get("resources") or {}
    if isinstance(resources, Mapping) and resources != (old.get("resources") or {}):
        problems += [(f"{prefix}.resources.{n}", why) for n, why in quantity_problems(resources)]
    inline = source.get("inline") if isinstance(source, Mapping) else None
    if isinstance(inline, Mapping) and source != (old.get("source") or {}):
        where = f"{prefix}.source.inline"
        problems += [(f"{where}[{n}]" if n else where, why) for n, why in inline_problems(inline)]
    if isinstance(env, Mapping) and env != (old.get("env") or {}):
        problems += [(f"{prefix}.env[{n}]", why) for n, why in env_problems(env)]
    return problems


# Why a Sandbox or SandboxReplicaSet may not name source.build (only a SandboxDeployment's
# operator builds, and resolves it to source.oci before stamping replica sets out).
NOT_BUILDER = (
    "only a SandboxDeployment builds its code (its operator runs the build and gives its "
    "replica sets the package as source.oci); use source.oci with a built package here"
)


def build_source_problems(new: Obj, old: Obj, prefix: str) -> Problems:
    """`source.build` on a function that is not a SandboxDeployment's: refused where it is
    introduced (on update only a changed source is checked, as the other rules)."""
    source = new.get("source")
    if not isinstance(source, Mapping) or source.get("build") is None:
        return []
    if source == (old.get("source") or {}):
        return []
    return [(f"{prefix}.source.build", NOT_BUILDER)]

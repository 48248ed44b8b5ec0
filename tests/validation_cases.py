"""The one table of inputs that both the models and the API server must judge alike (issue 10).

Why a module of its own: the unit tests check each row against the pydantic models and against
the pattern in the generated CRD; the integration tests send the same rows to the real API
server. A rule added to one side and not the other then fails a row somewhere.
"""

from __future__ import annotations

from typing import Any

# (value, accepted) for spec.function.resources.memory and .cpu.
QUANTITIES: list[tuple[Any, bool]] = [
    ("64Mi", True),
    ("1Gi", True),
    ("100m", True),
    ("0.5", True),
    (".5", True),
    ("1.", True),
    ("1e3", True),
    ("2E-2", True),
    ("0.001", True),
    ("1E", True),  # exa, not an exponent
    (1, True),
    (256, True),
    ("-12Gi", False),
    ("-1900Mi", False),
    ("+1Gi", False),
    ("0", False),
    ("0.0", False),
    ("00Mi", False),
    (".0", False),
    ("0e3", False),
    (0, False),
    (-1, False),
    ("1e.5", False),
    ("1e1234", False),
    ("lots", False),
    ("", False),
    ("1 Gi", False),
    ("64Mi\n", False),
]

# (handler, accepted)
HANDLERS: list[tuple[str, bool]] = [
    ("main:handler", True),
    ("pkg.app:handle", True),
    ("main.handler", True),
    ("pkg.app.handle", True),
    ("main", False),
    ("main:", False),
    (".handler", False),
    ("main:pkg.handler", False),
    ("1main:handler", False),
    ("main handler", False),
]

# (env name, accepted): a C identifier.
ENV_NAMES: list[tuple[str, bool]] = [
    ("LOG_LEVEL", True),
    ("_private", True),
    ("a1", True),
    ("1BAD-NAME", False),
    ("1BAD", False),
    ("a-b", False),
    ("a.b", False),
    ("", False),
]

# (spec.selector, spec.template.metadata.labels, accepted) for SandboxReplicaSets and
# SandboxDeployments: the selector must be valid, not empty, and match the template's labels.
SELECTORS: list[tuple[dict[str, Any], dict[str, str], bool]] = [
    ({"matchLabels": {"app": "a"}}, {"app": "a"}, True),
    ({"matchLabels": {"app": "a"}}, {"app": "a", "tier": "web"}, True),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]}, {"app": "b"},
     True),
    ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, {"app": "a"}, True),
    ({"matchLabels": {"app": "a"},
      "matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}, {"app": "a"}, True),
    ({"matchLabels": {"app": "a"}}, {"app": "b"}, False),
    ({"matchLabels": {"app": "a"}}, {}, False),
    ({"matchLabels": {"app": "a", "tier": "web"}}, {"app": "a"}, False),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]}, {"app": "a"},
     False),
    ({"matchLabels": {"app": "a"},
      "matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]},
     {"app": "a", "canary": "1"}, False),
    ({}, {"app": "a"}, False),  # empty: it would select every Sandbox of the namespace
    # Binding labels are set after creation: this matches the template and no bound Sandbox.
    ({"matchLabels": {"app": "a"},
      "matchExpressions": [{"key": "nest.sandbox.dev/pool", "operator": "DoesNotExist"}]},
     {"app": "a"}, False),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}, {"app": "a"}, False),
    ({"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["a"]}]}, {"app": "a"},
     False),
]  # fmt: skip

# (template metadata.labels, template spec fields, the field refused): a template that binds
# would bind every Sandbox it stamps out, so templates carry no binding, for anybody.
TEMPLATE_BINDINGS: list[tuple[dict[str, str], dict[str, str], str]] = [
    ({}, {"podName": "pool-0"}, "spec.template.spec.podName"),
    ({}, {"podNamespace": "nest-system"}, "spec.template.spec.podNamespace"),
    ({"nest.sandbox.dev/pod-uid": "u"}, {},
     "spec.template.metadata.labels[nest.sandbox.dev/pod-uid]"),
    ({"nest.sandbox.dev/pool": "default"}, {},
     "spec.template.metadata.labels[nest.sandbox.dev/pool]"),
]  # fmt: skip

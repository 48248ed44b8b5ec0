"""Issue 10's input rules, checked against the models and against the generated CRD alike.

The rows of tests/validation_cases.py go through the pydantic models and through the pattern
the generated YAML carries (with Python's `re`, which agrees with Go's RE2 on these constructs;
the integration tests send the same rows to a real API server). Inline files and env names, which
Kubernetes 1.20's schemas cannot express, go through the models and the admission rules.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from pydantic import ValidationError

from crds import CodeSource, Function, Resources
from crds.generate import KINDS, crd_manifest
from crds.validation import (
    INLINE_FILE_MAX_BYTES,
    INLINE_MAX_BYTES,
    INLINE_MAX_FILES,
    env_problems,
    inline_problems,
    stored_size,
)
from nest_operator import admission as adm
from tests.validation_cases import ENV_NAMES, HANDLERS, QUANTITIES


def _function_schema(kind: str) -> dict[str, Any]:
    manifest = crd_manifest(next(k for k in KINDS if k.kind == kind))
    node = manifest["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    path = ["spec", "function"] if kind == "Sandbox" else ["spec", "template", "spec", "function"]
    for name in path:
        node = node["properties"][name]
    return node


SCHEMAS = [_function_schema(kind) for kind in ("Sandbox", "SandboxReplicaSet", "SandboxDeployment")]


def _schema_accepts_quantity(node: dict[str, Any], value: Any) -> bool:
    if isinstance(value, int):
        return bool(value >= node["minimum"])
    return re.search(node["pattern"], value) is not None and "\n" not in value


@pytest.mark.parametrize(("value", "accepted"), QUANTITIES, ids=[repr(q) for q, _ in QUANTITIES])
@pytest.mark.parametrize("field", ["memory", "cpu"])
def test_quantities_one_rule_in_the_model_and_in_the_generated_schema(
    field: str, value: Any, accepted: bool
) -> None:
    try:
        Resources.model_validate({field: value})
        model = True
    except ValidationError as exc:
        assert field in str(exc)
        model = False
    assert model is accepted
    for schema in SCHEMAS:
        node = schema["properties"]["resources"]["properties"][field]
        assert _schema_accepts_quantity(node, value) is accepted


@pytest.mark.parametrize(("handler", "accepted"), HANDLERS)
def test_handlers_in_both_forms_one_rule_in_the_model_and_the_schema(
    handler: str, accepted: bool
) -> None:
    try:
        Function.model_validate({"handler": handler, "source": {"path": "/x"}})
        model = True
    except ValidationError:
        model = False
    assert model is accepted
    for schema in SCHEMAS:
        pattern = schema["properties"]["handler"]["pattern"]
        assert (re.search(pattern, handler) is not None) is accepted


def test_the_handler_pattern_agrees_with_the_loader() -> None:
    from isolation.host import parse_handler

    assert parse_handler("main.handler") == ("main", "handler")
    assert parse_handler("pkg.app.handle") == ("pkg.app", "handle")
    assert parse_handler("pkg.app:handle") == ("pkg.app", "handle")


@pytest.mark.parametrize(("name", "accepted"), ENV_NAMES)
def test_env_names_are_c_identifiers_in_the_model_and_the_webhook(
    name: str, accepted: bool
) -> None:
    try:
        Function.model_validate({"handler": "m:h", "source": {"path": "/x"}, "env": {name: "v"}})
        model = True
    except ValidationError as exc:
        assert repr(name) in str(exc)
        model = False
    assert model is accepted
    assert (env_problems({name: "v"}) == []) is accepted


def test_empty_files_and_empty_env_values_are_valid_and_the_schema_lets_them_through() -> None:
    source = CodeSource.model_validate({"inline": {"pkg/__init__.py": "", "py.typed": ""}})
    assert source.inline == {"pkg/__init__.py": "", "py.typed": ""}
    assert Function.model_validate(
        {"handler": "m:h", "source": {"path": "/x"}, "env": {"EMPTY": ""}}
    ).env == {"EMPTY": ""}
    for schema in SCHEMAS:
        # Kubernetes 1.20 takes "" for null unless the node is nullable.
        files = schema["properties"]["source"]["properties"]["inline"]["additionalProperties"]
        assert files["nullable"] is True and files["type"] == "string"
        assert schema["properties"]["env"]["additionalProperties"]["nullable"] is True


def test_a_real_null_is_refused_naming_the_file_or_variable() -> None:
    assert inline_problems({"a.py": None}) == [("a.py", 'is null; an empty file is ""')]
    assert env_problems({"A": None}) == [("A", 'value is null; an empty value is ""')]


@pytest.mark.parametrize(
    ("files", "bad"),
    [
        ({"x" * 300 + ".py": ""}, "x" * 300 + ".py"),
        ({"a": "", "a/b.py": ""}, "a/b.py"),
        ({"a/b": "", "a/b/c/d.py": ""}, "a/b/c/d.py"),
        ({"../evil.py": ""}, "../evil.py"),
        ({"a/../../evil.py": ""}, "a/../../evil.py"),
        ({"/etc/passwd": ""}, "/etc/passwd"),
        ({"a//b.py": ""}, "a//b.py"),
        ({"./a.py": ""}, "./a.py"),
        ({"a\\b.py": ""}, "a\\b.py"),
        ({"": "x"}, ""),
    ],
    ids=["300-chars", "file-beside-dir", "deep-file-beside-dir", "dotdot", "inner-dotdot",
         "absolute", "empty-part", "dot", "backslash", "empty"],
)  # fmt: skip
def test_bad_file_names_are_refused_naming_the_file(files: dict[str, str], bad: str) -> None:
    problems = inline_problems(files)
    assert [name for name, _ in problems] == [bad]
    assert "file name" in problems[0][1]
    with pytest.raises(ValidationError):
        CodeSource.model_validate({"inline": files})


def test_good_file_names_pass() -> None:
    files = {"main.py": "x", "pkg/__init__.py": "", "pkg/sub/mod.py": "y", "a.b": "", "é.py": ""}
    assert inline_problems(files) == []


def test_non_utf8_bytes_turned_into_u_fffd_are_refused_naming_the_file() -> None:
    text = b"print('\xff')\n".decode("utf-8", errors="replace")
    problems = inline_problems({"main.py": "x", "data.py": text})
    assert [name for name, _ in problems] == ["data.py"]
    assert "UTF-8" in problems[0][1]


@pytest.mark.parametrize(
    "text", ["", "plain", 'q"uote\\', "line\nbreak\r\t", "<a>&b", "\x01\x1f", "é€😀", "\u2028"]
)
def test_stored_size_is_the_json_encoding_go_writes(text: str) -> None:
    # Python's json escapes the same characters Go's does once told about <, >, & and U+2028/9;
    # ensure_ascii=False keeps other non-ASCII as UTF-8, as Go does.
    encoded = json.dumps(text, ensure_ascii=False)
    for ch, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        encoded = encoded.replace(ch, escape)
    encoded = encoded.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    assert stored_size(text) == len(encoded.encode("utf-8"))


def test_size_limits_per_file_and_in_all_name_the_file() -> None:
    at_limit = "x" * (INLINE_FILE_MAX_BYTES - 2)
    assert inline_problems({"big.py": at_limit}) == []
    problems = inline_problems({"big.py": at_limit + "x"})
    assert [name for name, _ in problems] == ["big.py"]
    # Escaping counts: 100 KiB of "<" take 600 KiB as stored.
    assert [n for n, _ in inline_problems({"lt.py": "<" * 100 * 1024})] == ["lt.py"]
    two = {"a.py": at_limit, "b.py": at_limit}
    assert [name for name, _ in inline_problems(two)] == [""]
    assert str(INLINE_MAX_BYTES) in inline_problems(two)[0][1]
    many = {f"f{i}.py": "" for i in range(INLINE_MAX_FILES + 1)}
    assert [name for name, _ in inline_problems(many)] == [""]


# -- the same rules at the door: the admission webhook ------------------------------------------


def _request(resource: str, function: dict[str, Any], old: dict[str, Any] | None = None) -> Any:
    def wrap(fn: dict[str, Any]) -> dict[str, Any]:
        if resource == "sandboxes":
            return {"metadata": {"name": "s"}, "spec": {"function": fn}}
        return {"metadata": {"name": "w"}, "spec": {"template": {"spec": {"function": fn}}}}

    return adm.Request(
        operation=adm.UPDATE if old is not None else adm.CREATE,
        group="nest.sandbox.dev",
        resource=resource,
        namespace="team",
        name="x",
        user=adm.User("alice", groups=("system:authenticated",)),
        obj=wrap(function),
        old=wrap(old) if old is not None else None,
    )


BAD_FUNCTION = {
    "handler": "main:handler",
    "source": {"inline": {"a": "", "a/b.py": "", "ok.py": "\ufffd"}},
    "env": {"1BAD-NAME": "x", "GOOD": None},
}


@pytest.mark.parametrize(
    ("resource", "prefix"),
    [
        ("sandboxes", "spec.function"),
        ("sandboxreplicasets", "spec.template.spec.function"),
        ("sandboxdeployments", "spec.template.spec.function"),
    ],
)
def test_the_webhook_refuses_what_the_schema_cannot_naming_each_field(
    resource: str, prefix: str
) -> None:
    verdict = adm.decide(_request(resource, BAD_FUNCTION), adm.Config(), adm.Answers())
    assert not verdict.allowed
    for where in ("source.inline[a/b.py]", "source.inline[ok.py]", "env[1BAD-NAME]", "env[GOOD]"):
        assert f"{prefix}.{where}: " in verdict.message


def test_the_webhook_allows_valid_functions_and_leaves_unchanged_stored_ones_alone() -> None:
    good = {"handler": "main.handler", "source": {"inline": {"main.py": "", "pkg/__init__.py": ""}}}
    assert adm.decide(_request("sandboxes", good), adm.Config(), adm.Answers()).allowed
    # Stored before the rule existed: scaling or finalizing it must still work.
    same = adm.decide(
        _request("sandboxes", BAD_FUNCTION, old=BAD_FUNCTION), adm.Config(), adm.Answers()
    )
    assert same.allowed
    changed = {**BAD_FUNCTION, "source": {"inline": {"a": "", "a/b.py": "1"}}}
    assert not adm.decide(
        _request("sandboxes", changed, old=BAD_FUNCTION), adm.Config(), adm.Answers()
    ).allowed

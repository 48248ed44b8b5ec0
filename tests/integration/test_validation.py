"""Issue 10 on a real API server: bad input refused at the door naming the field, valid input works.

The CRD schema decides what OpenAPI can say (quantities, handlers, per-file length, file count);
the admission webhook served by the operator decides the rest (inline file names, null contents,
U+FFFD, byte sizes, env names) with the models' own functions. Requests go through the kubernetes
client, so no client-side validation stands in for the server's. Each row of the shared table
(tests/validation_cases.py) is sent as a server-side dry run.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from crds.validation import INLINE_FILE_MAX_BYTES, INLINE_MAX_BYTES
from tests.integration.test_sidecar import invoke, running
from tests.kube import Kubectl, wait_for
from tests.validation_cases import (
    ENV_NAMES,
    HANDLERS,
    QUANTITIES,
    SELECTORS,
    TEMPLATE_BINDINGS,
)

GROUP, VERSION = "nest.sandbox.dev", "v1alpha1"
FUNCTION: dict[str, Any] = {
    "handler": "main:handler",
    "source": {"inline": {"main.py": "def handler(event, context):\n    return event\n"}},
    "resources": {"memory": "32Mi", "cpu": "50m"},
}
pytestmark = pytest.mark.usefixtures("nest_deployed")


def sandbox(name: str, **overrides: Any) -> dict[str, Any]:
    function = copy.deepcopy(FUNCTION) | overrides
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Sandbox",
        "metadata": {"name": name},
        "spec": {"function": function},
    }


def deployment(name: str, function: dict[str, Any], replicas: int = 0) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SandboxDeployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"function": function}},
        },
    }


@pytest.fixture
def objects(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def create(
    objects: client.CustomObjectsApi, namespace: str, body: dict[str, Any], dry_run: bool = True
) -> dict[str, Any]:
    plural = {
        "Sandbox": "sandboxes",
        "SandboxDeployment": "sandboxdeployments",
        "SandboxReplicaSet": "sandboxreplicasets",
    }[body["kind"]]
    kwargs = {"dry_run": "All"} if dry_run else {}
    created: dict[str, Any] = objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, body, **kwargs
    )
    return created


def refusal(objects: client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as caught:
        create(objects, namespace, body)
    assert caught.value.status in (403, 422), caught.value.body
    message: str = json.loads(caught.value.body)["message"]
    return message


@pytest.mark.parametrize(("value", "accepted"), QUANTITIES, ids=[repr(q) for q, _ in QUANTITIES])
def test_quantities_the_api_server_judges_as_the_models_do(
    nest_crds: list[str], objects: client.CustomObjectsApi, namespace: str, value: Any,
    accepted: bool,
) -> None:  # fmt: skip
    body = sandbox("q", resources={"memory": value, "cpu": value})
    if accepted:
        create(objects, namespace, body)
        return
    message = refusal(objects, namespace, body)
    assert "spec.function.resources.memory" in message and "spec.function.resources.cpu" in message


@pytest.mark.parametrize(("handler", "accepted"), HANDLERS)
def test_handlers_in_both_forms(
    nest_crds: list[str], objects: client.CustomObjectsApi, namespace: str, handler: str,
    accepted: bool,
) -> None:  # fmt: skip
    body = sandbox("h", handler=handler)
    if accepted:
        create(objects, namespace, body)
    else:
        assert "spec.function.handler" in refusal(objects, namespace, body)


@pytest.mark.parametrize(("name", "accepted"), ENV_NAMES)
def test_env_names(
    nest_crds: list[str], objects: client.CustomObjectsApi, namespace: str, name: str,
    accepted: bool,
) -> None:  # fmt: skip
    body = sandbox("e", env={name: "v", "EMPTY": ""})
    if accepted:
        create(objects, namespace, body)
    else:
        assert f"spec.function.env[{name}]" in refusal(objects, namespace, body)


def test_empty_files_and_values_are_stored_as_empty_strings(
    nest_crds: list[str], objects: client.CustomObjectsApi, namespace: str
) -> None:
    files = {"main.py": "def handler(e, c):\n    return e\n", "pkg/__init__.py": "", "py.typed": ""}
    body = sandbox("empty", source={"inline": files}, env={"EMPTY": ""})
    stored = create(objects, namespace, body, dry_run=False)
    assert stored["spec"]["function"]["source"]["inline"] == files
    assert stored["spec"]["function"]["env"] == {"EMPTY": ""}


def test_a_null_file_is_refused_naming_it(
    nest_crds: list[str], objects: client.CustomObjectsApi, namespace: str
) -> None:
    body = sandbox("null", source={"inline": {"main.py": "x", "pkg/__init__.py": None}})
    assert "spec.function.source.inline[pkg/__init__.py]: is null" in refusal(
        objects, namespace, body
    )


@pytest.mark.parametrize(
    "bad",
    ["x" * 300 + ".py", "a/b.py", "../evil.py", "/etc/passwd", "a//b.py"],
    ids=["300-chars", "file-beside-dir", "dotdot", "absolute", "empty-part"],
)
@pytest.mark.parametrize("kind", ["Sandbox", "SandboxDeployment"])
def test_bad_file_names_are_refused_naming_the_file(
    nest_crds: list[str], objects: client.CustomObjectsApi, namespace: str, bad: str, kind: str
) -> None:
    files = {"main.py": "x", "a": "", bad: ""}
    function = copy.deepcopy(FUNCTION) | {"source": {"inline": files}}
    body = sandbox("n", **function) if kind == "Sandbox" else deployment("n", function)
    prefix = "spec.function" if kind == "Sandbox" else "spec.template.spec.function"
    message = refusal(objects, namespace, body)
    assert f"{prefix}.source.inline[{bad}]: file name" in message


def workload(
    kind: str, selector: dict[str, Any], labels: dict[str, str], **template_spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": "w"},
        "spec": {
            "replicas": 0,
            "selector": selector,
            "template": {
                "metadata": {"labels": labels},
                "spec": {"function": copy.deepcopy(FUNCTION), **template_spec},
            },
        },
    }


@pytest.mark.parametrize("kind", ["SandboxReplicaSet", "SandboxDeployment"])
@pytest.mark.parametrize(("selector", "labels", "accepted"), SELECTORS)
def test_a_selector_that_does_not_match_the_template_is_refused_naming_it(
    nest_crds: list[str], objects: client.CustomObjectsApi, namespace: str, kind: str,
    selector: dict[str, Any], labels: dict[str, str], accepted: bool,
) -> None:  # fmt: skip
    body = workload(kind, selector, labels)
    if accepted:
        create(objects, namespace, body)
    else:
        assert "denied the request: spec.selector: " in refusal(objects, namespace, body)


@pytest.mark.parametrize("kind", ["SandboxReplicaSet", "SandboxDeployment"])
@pytest.mark.parametrize(("labels", "spec", "field"), TEMPLATE_BINDINGS)
def test_a_template_that_binds_is_refused_naming_the_field(
    nest_crds: list[str], objects: client.CustomObjectsApi, namespace: str, kind: str,
    labels: dict[str, str], spec: dict[str, str], field: str,
) -> None:  # fmt: skip
    body = workload(kind, {"matchLabels": {"app": "w"}}, {"app": "w", **labels}, **spec)
    assert f"{field}: a template may not bind" in refusal(objects, namespace, body)


def test_non_utf8_code_is_refused_naming_the_file(
    nest_crds: list[str], kubectl: Kubectl, tmp_path: Path
) -> None:
    # kubectl reads the file's bytes and sends U+FFFD for \xff; the webhook refuses that.
    manifest = (
        b"apiVersion: nest.sandbox.dev/v1alpha1\nkind: Sandbox\nmetadata: {name: binary}\n"
        b"spec:\n  function:\n    handler: main:handler\n    source:\n      inline:\n"
        b'        main.py: "x"\n        blob.py: "\xff\xfe"\n'
    )
    path = tmp_path / "binary.yaml"
    path.write_bytes(manifest)
    result = kubectl.run("create", "-f", str(path), check=False)
    assert result.returncode != 0
    assert "spec.function.source.inline[blob.py]: contains U+FFFD" in result.stderr


def test_inline_size_limits_are_refused_at_the_door_naming_the_file(
    nest_crds: list[str], objects: client.CustomObjectsApi, namespace: str
) -> None:
    big = "x" * (INLINE_FILE_MAX_BYTES - 2)
    message = refusal(objects, namespace, sandbox("s", source={"inline": {"big.py": big + "x"}}))
    assert "spec.function.source.inline[big.py]" in message
    # Within maxLength, over the byte limit: "<" is stored as \u003c.
    lt = refusal(objects, namespace, sandbox("s", source={"inline": {"lt.py": "<" * 100_000}}))
    assert "spec.function.source.inline[lt.py]: takes" in lt
    two = {"a.py": big, "b.py": big}
    assert f"more than {INLINE_MAX_BYTES}" in refusal(
        objects, namespace, sandbox("s", source={"inline": two})
    )


def test_code_at_the_size_limit_is_stored_down_to_the_replica_set(
    nest_crds: list[str], objects: client.CustomObjectsApi, namespace: str
) -> None:
    # Two files that together fill the budget exactly, as stored.
    half = (INLINE_MAX_BYTES - 2) // 2
    files = {"a.py": "x" * (half - len('"a.py"') - 4), "b.py": "y" * (half - len('"b.py"') - 4)}
    function = copy.deepcopy(FUNCTION) | {"source": {"inline": files}}
    create(objects, namespace, deployment("full", function, replicas=1), dry_run=False)
    rs = wait_for(
        lambda: objects.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "sandboxreplicasets", label_selector="app=full"
        )["items"],
        timeout=60,
        what="the operator to store the replica set of a deployment with 1 MiB of code",
    )
    assert rs[0]["spec"]["template"]["spec"]["function"]["source"]["inline"] == files
    wait_for(
        lambda: objects.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "sandboxes", label_selector="app=full"
        )["items"],
        timeout=60,
        what="its Sandbox to be stored",
    )


def test_a_lambda_handler_with_empty_package_files_runs(
    nest_pool: list[dict[str, Any]], kubectl: Kubectl, objects: client.CustomObjectsApi,
    namespace: str,
) -> None:  # fmt: skip
    files = {
        "main.py": (
            "import os, pkg\n"
            "def handler(event, context):\n"
            "    here = os.path.dirname(pkg.__file__)\n"
            "    return {'init': os.path.getsize(pkg.__file__),\n"
            "            'typed': os.path.exists(os.path.join(here, 'py.typed'))}\n"
        ),
        "pkg/__init__.py": "",
        "pkg/py.typed": "",
    }
    body = sandbox("lambda", handler="main.handler", source={"inline": files})
    body["spec"]["function"]["isolation"] = "subprocess"
    create(objects, namespace, body, dry_run=False)
    obj = running(kubectl, "lambda", timeout=120)
    assert invoke(obj, {}) == (200, {"init": 0, "typed": True})

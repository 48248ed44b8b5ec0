"""Env resolution and `$(VAR)` expansion follow the kubelet's rules."""

import pytest

from nest_cluster.errors import RunnerError
from nest_cluster.runner.env import (
    NODE_MARKER,
    PodFacts,
    Sources,
    base_env,
    command_line,
    container_env,
    expand,
    referenced_objects,
)

POD = {
    "metadata": {
        "name": "web-1",
        "namespace": "ns",
        "uid": "u-1",
        "labels": {"app": "web"},
        "annotations": {"note": "n"},
    },
    "spec": {"nodeName": "nest-local", "serviceAccountName": "sa"},
}
FACTS = PodFacts(pod_ip="127.0.0.7")
OPTIONAL = {"name": "nope", "key": "k", "optional": True}
MEMORY_MI = {"resource": "limits.memory", "divisor": "1Mi"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)-$(B)", "a-b"),
        ("$$(A)", "$(A)"),
        ("$(MISSING)", "$(MISSING)"),
        ("$(A", "$(A"),
        ("cost $5", "cost $5"),
        ("end$", "end$"),
        ("$$$(A)", "$a"),
    ],
)
def test_expand(text: str, expected: str) -> None:
    assert expand(text, {"A": "a", "B": "b"}) == expected


def test_downward_api_fields() -> None:
    container = {
        "env": [
            {"name": n, "valueFrom": {"fieldRef": {"fieldPath": p}}}
            for n, p in [
                ("NAME", "metadata.name"),
                ("NS", "metadata.namespace"),
                ("UID", "metadata.uid"),
                ("IP", "status.podIP"),
                ("HOST", "status.hostIP"),
                ("NODE", "spec.nodeName"),
                ("SA", "spec.serviceAccountName"),
                ("APP", "metadata.labels['app']"),
                ("NOTE", "metadata.annotations['note']"),
            ]
        ]
    }
    env = container_env(POD, container, FACTS, Sources(), {})
    assert env == {
        "NAME": "web-1", "NS": "ns", "UID": "u-1", "IP": "127.0.0.7", "HOST": "127.0.0.1",
        "NODE": "nest-local", "SA": "sa", "APP": "web", "NOTE": "n",
    }  # fmt: skip


def test_env_order_expansion_and_sources() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "cm"}}, {"secretRef": {"name": "s"}, "prefix": "S_"}],
        "env": [
            {"name": "X", "value": "x"},
            {"name": "Y", "value": "$(X)-$(FROM_CM)-$(LATER)"},
            {"name": "LATER", "value": "late"},
            {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "FROM_CM"}}},
            {"name": "P", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
            {"name": "O", "valueFrom": {"secretKeyRef": OPTIONAL}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": MEMORY_MI}},
        ],
        "resources": {"limits": {"memory": "128Mi"}},
    }  # fmt: skip
    sources = Sources({"cm": {"FROM_CM": "c"}}, {"s": {"pw": "secret"}})
    env = container_env(POD, container, FACTS, sources, {"PATH": "/bin"})
    assert env["Y"] == "x-c-$(LATER)"  # only variables defined earlier expand
    assert env["K"] == "c" and env["P"] == "secret" and env["S_pw"] == "secret"
    assert "O" not in env
    assert env["MEM"] == "128"
    assert env["PATH"] == "/bin"


def test_missing_config_map_is_a_clear_error() -> None:
    container = {
        "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]
    }
    with pytest.raises(RunnerError, match='configmap "cm" not found'):
        container_env(POD, container, FACTS, Sources(), {})


def test_referenced_objects() -> None:
    container = {
        "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}}],
        "envFrom": [{"configMapRef": {"name": "c1"}}],
    }
    assert referenced_objects(container) == ({"c1"}, {"s1"})


def test_command_line_expands_and_requires_a_command() -> None:
    spec = {"command": ["python3", "-m", "http.server"], "args": ["--bind", "$(IP)", "$$(IP)"]}
    assert command_line(spec, {"IP": "127.0.0.2"}) == [
        "python3", "-m", "http.server", "--bind", "127.0.0.2", "$(IP)",
    ]  # fmt: skip
    with pytest.raises(RunnerError, match="command"):
        command_line({"args": ["x"]}, {})


def test_base_env_reaches_the_real_api_server_and_marks_the_node() -> None:
    env = base_env(POD, 6443, "/state/node", {"PATH": "/usr/bin", "SECRET": "no"})
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert env[NODE_MARKER] == "/state/node"
    assert env["HOSTNAME"] == "web-1"
    assert "SECRET" not in env


def test_resource_field_ref_reads_the_named_container_and_defaulted_divisor() -> None:
    from nest_cluster.runner.env import _resource_ref

    pod = {
        "spec": {
            "containers": [
                {"name": "runtime", "resources": {"limits": {"memory": "2Gi", "cpu": "2"}}},
                {"name": "sidecar", "resources": {"limits": {"memory": "256Mi"}}},
            ]
        }
    }
    sidecar = pod["spec"]["containers"][1]
    # The API server stores an unset divisor as "0".
    memory = {"containerName": "runtime", "resource": "limits.memory", "divisor": "0"}
    assert _resource_ref(memory, pod, sidecar) == str(2 * 2**30)
    cpu = {"containerName": "runtime", "resource": "limits.cpu", "divisor": "1m"}
    assert _resource_ref(cpu, pod, sidecar) == "2000"
    own = {"resource": "limits.memory", "divisor": "1Mi"}
    assert _resource_ref(own, pod, sidecar) == "256"

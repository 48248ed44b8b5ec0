"""The thin shell around the decisions: parsing, exit codes, help, and choices made from reads."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pytest

from gateway import openapi
from nest import cli, deploy_cmd, inspect_cmd, kube
from nest.errors import (
    FunctionFailedError,
    InvokeFailedError,
    NestError,
    NotFoundError,
    WaitTimeoutError,
)

COMMANDS = [
    ["deploy"],
    ["invoke"],
    ["get"],
    ["describe"],
    ["logs"],
    ["scale"],
    ["rollout"],
    ["rollout", "status"],
    ["rollout", "undo"],
    ["delete"],
    ["openapi"],
    ["operator"],
    ["operator", "run"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, "--help"])
    assert exit_.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_top_level_help_lists_the_function_commands_and_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for word in ("nest deploy", "nest invoke", "nest rollout", "exit codes: 0 success"):
        assert word in out


@pytest.mark.parametrize(
    ("argv", "event", "namespace"),
    [
        (["invoke", "hello"], None, None),
        (["invoke", "hello", "{}"], "{}", None),
        (["invoke", "hello", "-n", "ns", '{"a": 1}'], '{"a": 1}', "ns"),
        (["invoke", "hello", "-n", "ns", "-"], "-", "ns"),
        (["invoke", "-n", "ns", "hello", "[1]"], "[1]", "ns"),
    ],
)
def test_the_event_may_come_before_or_after_options(
    argv: list[str], event: str | None, namespace: str | None
) -> None:
    args = cli.parse(cli.build_parser(), argv)
    assert (args.name, args.event, args.namespace) == ("hello", event, namespace)


@pytest.mark.parametrize(
    "argv",
    [
        ["invoke", "hello", "-n", "ns", "a", "b"],
        ["get", "functions", "-n", "ns", "extra", "more"],
        ["deploy", "x", "--bogus"],
    ],
)
def test_leftover_arguments_are_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.parse(cli.build_parser(), argv)
    assert exit_.value.code == 2


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NestError("x"), 1),
        (NotFoundError("x"), 1),
        (FunctionFailedError("x"), 1),
        (WaitTimeoutError("x"), 3),
        (InvokeFailedError("x"), 4),
    ],
)
def test_errors_map_to_documented_exit_codes(
    error: NestError, code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise error

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    # Each command's function is bound at registration: point `openapi` at a failing one.
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["openapi"].set_defaults(func=fail)
    assert cli.main(["openapi"]) == code
    assert capsys.readouterr().err == "nest: x\n"


def test_openapi_is_the_gateways_document_without_a_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["openapi"]) == 0
    assert json.loads(capsys.readouterr().out) == openapi.document()
    assert cli.main(["openapi", "-o", "yaml"]) == 0
    assert "openapi: 3.1.0" in capsys.readouterr().out


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: secret-token}}]
contexts:
- {name: with-ns, context: {cluster: c, user: u, namespace: team}}
- {name: plain, context: {cluster: c, user: u}}
current-context: %s
"""


def test_the_kubeconfig_is_nest_kubeconfig_then_kubeconfig(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_text(KUBECONFIG % "plain")
    second.write_text(KUBECONFIG % "plain")
    assert kube.kubeconfig_path({"NEST_KUBECONFIG": str(first), "KUBECONFIG": str(second)}) == first
    assert kube.kubeconfig_path({"KUBECONFIG": f"{second}:{first}"}) == second
    with pytest.raises(NestError, match="nest cluster up"):
        kube.kubeconfig_path({"NEST_KUBECONFIG": str(tmp_path / "missing")})


def test_the_namespace_defaults_to_the_contexts_then_default(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(KUBECONFIG % "with-ns")
    assert kube.context_namespace(path) == "team"
    assert kube.Cluster(path, None).namespace == "team"
    assert kube.Cluster(path, "other").namespace == "other"
    path.write_text(KUBECONFIG % "plain")
    assert kube.context_namespace(path) == "default"


def test_the_bearer_token_of_the_kubeconfig_is_what_the_gateway_gets(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(KUBECONFIG % "plain")
    assert kube.Cluster(path, None).bearer_token() == "secret-token"


def test_a_selector_becomes_label_selector_syntax() -> None:
    dep = {
        "spec": {
            "selector": {
                "matchLabels": {"b": "2", "a": "1"},
                "matchExpressions": [
                    {"key": "t", "operator": "In", "values": ["x", "y"]},
                    {"key": "u", "operator": "DoesNotExist"},
                ],
            }
        }
    }
    assert kube.selector_string(dep) == "a=1,b=2,t in (x,y),!u"


def test_logs_come_from_each_hosting_pod_once_without_other_functions_lines() -> None:
    sandboxes: list[dict[str, Any]] = [
        {"spec": {"podName": "p2", "podNamespace": "ns"}},
        {"spec": {"podName": "p1", "podNamespace": "ns"}},
        {"spec": {"podName": "p1", "podNamespace": "ns"}},
        {"spec": {}},
    ]
    assert inspect_cmd.hosting_pods(sandboxes) == [("ns", "p1"), ("ns", "p2")]
    lines = ["ready", "other-abc crashed", "mine-1 said hi", "untagged print"]
    assert inspect_cmd.filter_lines(lines, {"other-abc"}) == [
        "ready",
        "mine-1 said hi",
        "untagged print",
    ]


class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


def test_the_event_is_the_argument_or_stdin_and_json_is_checked() -> None:
    assert deploy_cmd.event_body(None, "application/json", _Stdin(b"")) == b"{}"
    assert deploy_cmd.event_body('{"a": 1}', "application/json", _Stdin(b"")) == b'{"a": 1}'
    assert deploy_cmd.event_body("-", "application/json", _Stdin(b"[1]\n")) == b"[1]\n"
    assert deploy_cmd.event_body("raw", "text/plain", _Stdin(b"")) == b"raw"
    with pytest.raises(NestError, match="not JSON"):
        deploy_cmd.event_body("{nope", "application/json; charset=utf-8", _Stdin(b""))


class FakeCluster:
    """The reads invoke_urls makes, answered from memory."""

    namespace = "ns"

    def __init__(self, gateway: str | None, token: str | None, ready: list[dict[str, Any]]) -> None:
        self.gateway, self.token, self.ready = gateway, token, ready

    def gateway_url(self) -> str | None:
        return self.gateway

    def bearer_token(self) -> str | None:
        return self.token

    def function(self, name: str) -> dict[str, Any]:
        return {}

    def endpoints_of(self, name: str) -> dict[str, Any]:
        return {"status": {"ready": self.ready}}


ADDRESS = {"podIP": "10.0.0.1", "port": 8080, "uid": "u1"}


@pytest.mark.parametrize(
    ("gateway", "token", "flag", "direct", "expected"),
    [
        ("http://gw:8090", "t", None, False, "http://gw:8090/v1/namespaces/ns/functions/f:invoke"),
        (None, "t", "http://given/", False, "http://given/v1/namespaces/ns/functions/f:invoke"),
        ("http://gw:8090", None, None, False, "http://10.0.0.1:8080/v1/sandboxes/u1/invoke"),
        (None, "t", None, False, "http://10.0.0.1:8080/v1/sandboxes/u1/invoke"),
        ("http://gw:8090", "t", None, True, "http://10.0.0.1:8080/v1/sandboxes/u1/invoke"),
    ],
)
def test_invoke_prefers_the_gateway_and_falls_back_to_a_ready_sandbox(
    gateway: str | None, token: str | None, flag: str | None, direct: bool, expected: str
) -> None:
    fake: Any = FakeCluster(gateway, token, [ADDRESS])
    assert deploy_cmd.invoke_urls(fake, "f", flag, direct)[0] == expected


def test_direct_invoke_without_a_ready_sandbox_says_why() -> None:
    fake: Any = FakeCluster(None, None, [{"podIP": None, "port": None, "uid": "u"}])
    with pytest.raises(NestError, match="no ready sandbox"):
        deploy_cmd.invoke_urls(fake, "f", None, False)

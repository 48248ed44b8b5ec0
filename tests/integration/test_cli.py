"""`nest` against the real control plane, run as a user runs it: a subprocess, exit codes, output.

Everything is deploy/ as installed by the `nest_pool` fixture: the operator turns what `nest
deploy` writes into sandboxes on the pool pods, the gateway routes `nest invoke`. Skipped when
no operator manages the cluster (nothing would ever become ready).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_gateway import gateway_url, operator_active  # noqa: F401
from tests.kube import Kubectl, wait_for

VERSIONED = (
    "def handler(event, context):\n"
    "    print('invoked', context.function_name, flush=True)\n"
    "    return {'version': VERSION, 'event': event}\n"
)
Nest = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(autouse=True)
def with_operator_and_gateway(operator_active: bool, gateway_url: str) -> None:  # noqa: F811
    if not operator_active:
        pytest.skip("needs the operator (deploy/operator/ or `nest operator run`)")


@pytest.fixture
def nest(kubeconfig: Path, namespace: str) -> Nest:
    """Run `nest ARGS -n <test namespace>` against the test cluster."""
    env = {**os.environ, "NEST_KUBECONFIG": str(kubeconfig)}
    env.pop("NEST_GATEWAY", None)

    def run(*args: str, input: str | None = None, timeout: float = 180) -> Any:
        return subprocess.run(
            [sys.executable, "-m", "nest", *args, "-n", namespace],
            input=input, capture_output=True, text=True, env=env, timeout=timeout,
        )  # fmt: skip

    return run


def function_dir(tmp_path: Path, version: int, body: str = VERSIONED) -> Path:
    path = tmp_path / f"v{version}"
    path.mkdir()
    (path / "main.py").write_text(f"VERSION = {version}\n" + body)
    return path


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr}{proc.stdout}"
    return proc


def test_a_function_deployed_and_invoked_through_nest(
    nest: Nest, kubectl: Kubectl, tmp_path: Path
) -> None:
    deployed = ok(nest("deploy", str(function_dir(tmp_path, 1)), "--name", "hello",
                       "--isolation", "namespace", "--replicas", "2"))  # fmt: skip
    assert "waiting: " in deployed.stderr and "hello: 2/2 ready" in deployed.stderr
    stored = kubectl.json("get", "sbxd", "hello")
    assert stored["status"]["availableReplicas"] == 2
    assert stored["spec"]["template"]["spec"]["function"]["isolation"] == "namespace"

    invoked = ok(nest("-v", "invoke", "hello", '{"name": "nest"}'))
    assert json.loads(invoked.stdout) == {"version": 1, "event": {"name": "nest"}}
    assert "through the gateway" in invoked.stderr
    piped = ok(nest("invoke", "hello", "-", "--direct", input='{"via": "stdin"}'))
    assert json.loads(piped.stdout)["event"] == {"via": "stdin"}

    listed = ok(nest("get", "functions", "-o", "json"))
    [item] = json.loads(listed.stdout)["items"]
    assert item["metadata"]["name"] == "hello" and item["status"]["readyReplicas"] == 2
    table = ok(nest("get", "functions")).stdout.splitlines()
    assert table[0].split()[:2] == ["NAME", "READY"] and table[1].split()[:2] == ["hello", "2/2"]
    sandboxes = ok(nest("get", "sandboxes", "--function", "hello")).stdout.splitlines()[1:]
    assert [row.split()[2] for row in sandboxes] == ["Running", "Running"]
    hosting = [row.split()[5].split("/")[1] for row in sandboxes]
    pool = {row.split()[1]: int(row.split()[6])
            for row in ok(nest("get", "pods")).stdout.splitlines()[1:]}  # fmt: skip
    assert all(pool[pod] >= hosting.count(pod) for pod in hosting)

    described = ok(nest("describe", "function", "hello")).stdout
    revisions = described.split("Revisions:\n")[1].split("Endpoints:")[0].splitlines()
    assert [r.split()[0] for r in revisions[1:]] == ["1"]
    assert described.count("  ready   hello-") == 2
    assert "ScalingReplicaSet" in described

    logged = ok(nest("logs", "hello")).stdout.splitlines()
    assert logged and {line.split("]")[0].lstrip("[") for line in logged} <= set(hosting)
    # The handler printed (and flushed) into its pool pod's runtime container.
    assert any(f"invoked {kubectl.namespace}/hello" in line for line in logged)


def test_a_broken_function_makes_deploy_fail_naming_the_import_error(
    nest: Nest, tmp_path: Path
) -> None:
    broken = function_dir(tmp_path, 1, "import no_such_module_anywhere\n" + VERSIONED)
    proc = nest("deploy", str(broken), "--name", "broken", "--timeout", "120")
    assert proc.returncode == 1, proc.stderr
    assert "ImportError" in proc.stderr and "no_such_module_anywhere" in proc.stderr


def test_a_function_that_cannot_be_placed_times_out_with_exit_3(nest: Nest, tmp_path: Path) -> None:
    proc = nest("deploy", str(function_dir(tmp_path, 1)), "--name", "huge",
                "--memory", "100Ti", "--timeout", "3")  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "huge not ready after 3s" in proc.stderr


def test_scale_then_delete(nest: Nest, kubectl: Kubectl, tmp_path: Path) -> None:
    ok(nest("deploy", str(function_dir(tmp_path, 1)), "--name", "sc", "--isolation", "namespace",
            "--replicas", "1", "--no-wait"))  # fmt: skip
    ok(nest("scale", "sc", "--replicas", "3", "--wait"))
    assert kubectl.json("get", "sbxd", "sc")["status"]["readyReplicas"] == 3
    ok(nest("scale", "sc", "--replicas", "0"))
    wait_for(lambda: not kubectl.json("get", "sbx")["items"], timeout=60, what="scaled to zero")

    ok(nest("delete", "sc", "--wait"))
    gone = kubectl.run("get", "sbxd", "sc", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    missing = nest("invoke", "sc")
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert "No functions found" in ok(nest("get", "functions")).stderr


def test_rollout_undo_returns_to_the_previous_code(
    nest: Nest, kubectl: Kubectl, tmp_path: Path
) -> None:
    for version in (1, 2):
        ok(nest("deploy", str(function_dir(tmp_path, version)), "--name", "roll",
                "--isolation", "namespace"))  # fmt: skip
    assert json.loads(ok(nest("invoke", "roll")).stdout)["version"] == 2

    undone = ok(nest("rollout", "undo", "roll"))
    assert "rolled back to revision 1" in undone.stdout
    status = ok(nest("rollout", "status", "roll"))
    assert "successfully rolled out (revision 3)" in status.stdout
    wait_for(lambda: json.loads(ok(nest("invoke", "roll")).stdout)["version"] == 1,
             timeout=60, what="version 1 serving again")  # fmt: skip
    missing = nest("rollout", "undo", "roll", "--to-revision", "9")
    assert missing.returncode == 1 and "revision 9 not found" in missing.stderr


def test_a_non_2xx_answer_exits_4_with_the_body_on_stdout(nest: Nest, tmp_path: Path) -> None:
    teapot = tmp_path / "teapot.py"
    teapot.write_text(
        "from sandbox import Response\n"
        "def handler(event, context):\n"
        "    return Response(418, {}, {'short': 'and stout'})\n"
    )
    ok(nest("deploy", str(teapot), "--isolation", "namespace"))
    proc = nest("invoke", "teapot")
    assert proc.returncode == 4, proc.stderr
    assert json.loads(proc.stdout) == {"short": "and stout"}
    assert "HTTP 418" in proc.stderr

"""End to end with the operator: deploy through the OpenAPI, invoke, scale from zero, roll back.

Everything is the real thing: the gateway pod from deploy/, the operator (deploy/operator/, or
one run by hand against the cluster) turning SandboxDeployments into bound Sandboxes and writing
SandboxEndpoints, the pool pods running them. Skipped when no operator manages the cluster.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import pytest
import requests

from tests.integration.test_gateway import (  # noqa: F401 - fixtures used by name
    COUNTER,
    Client,
    developer,
    function,
    gateway_url,
    operator_active,
)
from tests.kube import wait_for


@pytest.fixture(autouse=True)
def with_operator(operator_active: bool) -> None:  # noqa: F811
    if not operator_active:
        pytest.skip("waits for the operator (deploy/operator/ or `nest operator run`)")


def test_function_deployed_through_the_openapi_and_invoked(developer: Client) -> None:  # noqa: F811
    created = developer.create(**function("hello", replicas=1))
    assert created.status_code == 201, created.text
    # Not ready yet: the activator holds the request until the operator's endpoints say so.
    resp = developer.invoke("hello", {"name": "nest"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["event"] == {"name": "nest"}
    view = developer.request("GET", developer.fn("/hello")).json()
    assert view["endpoints"]["readyCount"] == 1
    assert [r["revision"] for r in view["revisions"]] == [1]
    sandboxes = developer.request("GET", developer.fn("/hello/sandboxes")).json()["items"]
    assert [s["status"]["phase"] for s in sandboxes] == ["Running"]


ENV_CODE = """
import os
TABLE = os.environ.get("TABLE")

def handler(event, context):
    return {"table": TABLE, "mode": os.getenv("MODE")}
"""


@pytest.mark.parametrize("isolation", ["namespace", "subprocess"])
def test_spec_env_is_the_functions_environment(developer: Client, isolation: str) -> None:  # noqa: F811
    """Lambda-style configuration: `spec.function.env` read at import and in calls, in both
    isolations (namespace sandboxes share a process: each sees its own, not its neighbour's)."""
    for name, table in ((f"env-{isolation}-a", "orders"), (f"env-{isolation}-b", "users")):
        spec = function(name, ENV_CODE, replicas=1, isolation=isolation,
                        env={"TABLE": table, "MODE": name})  # fmt: skip
        created = developer.create(**spec)
        assert created.status_code == 201, created.text
    for name, table in ((f"env-{isolation}-a", "orders"), (f"env-{isolation}-b", "users")):
        resp = developer.invoke(name, {})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"table": table, "mode": name}


def test_scale_from_zero_under_a_request_loop(developer: Client) -> None:  # noqa: F811
    spec = function("loop", autoscaling={"minReplicas": 0, "maxReplicas": 2}, concurrency=4)
    assert developer.create(**spec).status_code == 201
    assert developer.request("GET", developer.fn("/loop/scale")).json()["replicas"] == 0
    answers: list[tuple[int, requests.Response]] = []
    lock = threading.Lock()

    def loop(worker: int) -> None:
        for i in range(10):
            resp = developer.invoke("loop", {"id": worker * 100 + i})
            with lock:
                answers.append((worker * 100 + i, resp))

    threads = [threading.Thread(target=loop, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == 40
    bad = [(i, r.status_code, r.text) for i, r in answers if r.status_code != 200]
    assert not bad, bad
    assert sorted(r.json()["event"]["id"] for _, r in answers) == sorted(i for i, _ in answers)
    per_instance: defaultdict[str, list[int]] = defaultdict(list)
    for _, resp in answers:
        per_instance[resp.json()["instance"]].append(resp.json()["count"])
    for counts in per_instance.values():
        # Each sandbox counted its invocations: 1..n with no gap means none ran twice.
        assert sorted(counts) == list(range(1, len(counts) + 1))
    metrics = requests.get(f"{developer.base}/metrics", timeout=10).text
    assert (
        f'nest_gateway_cold_starts_total{{function="loop",namespace="{developer.ns}"}}' in metrics
    )


def _handler_of(view: dict[str, Any]) -> str:
    handler: str = view["spec"]["template"]["spec"]["function"]["handler"]
    return handler


def test_rollout_status_and_undo(developer: Client) -> None:  # noqa: F811
    v1 = "def handler(event, context):\n    return 'v1'\n"
    v2 = "def handler(event, context):\n    return 'v2'\n"
    assert developer.create(**function("roll", code=v1, replicas=1)).status_code == 201

    def complete() -> bool:
        return bool(developer.request("GET", developer.fn("/roll/rollout")).json()["complete"])

    wait_for(complete, timeout=60, what="revision 1 rolled out")
    update = {"handler": "main:handler", "files": {"main.py": v2}, "isolation": "namespace"}
    assert developer.request("PUT", developer.fn("/roll"), json=update).status_code == 200
    wait_for(lambda: developer.invoke("roll", {}).text == "v2", timeout=60, what="v2 serving")
    wait_for(complete, timeout=60, what="revision 2 rolled out")
    revisions = developer.request("GET", developer.fn("/roll")).json()["revisions"]
    assert [r["revision"] for r in revisions] == [1, 2]
    undone = developer.request("POST", developer.fn("/roll/rollout:undo"), json={})
    assert undone.status_code == 200, undone.text
    assert undone.json()["spec"]["template"]["spec"]["function"]["source"]["inline"] == {
        "main.py": v1
    }
    wait_for(lambda: developer.invoke("roll", {}).text == "v1", timeout=60, what="v1 back")

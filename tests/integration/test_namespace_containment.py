"""Namespace mode contains what it can, in a real pool pod of deploy/ (issue 10, item 7).

Namespace sandboxes share the runtime's interpreter, so one that ends the process ends them
all; what Nest now promises is that it is *named* (Failed, RuntimeCrash, never loaded into the
shared runtime again), its neighbours restart with a message naming it, and a crash at import
does not crash-loop the pod. Hung calls and slow imports never take the neighbours' threads or
the event loop. Each case is a test; the test plays scheduler, binding Sandboxes to one pod.
"""

from __future__ import annotations

import http.client
import urllib.error
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import pytest

from tests.integration.test_sidecar import bind, invoke, running, sandbox_where
from tests.kube import Kubectl, wait_for

pytestmark = pytest.mark.cluster

ECHO = "import os\ndef handler(event, context):\n    return {'pid': os.getpid()}\n"
EXIT_AT_INVOKE = "import os\ndef handler(event, context):\n    os._exit(7)\n"
EXIT_AT_IMPORT = "import os\nos._exit(7)\ndef handler(event, context):\n    return 1\n"
SLEEPER = (
    "import time\n"
    "def handler(event, context):\n"
    "    time.sleep(event.get('s', 0))\n"
    "    return {'slept': event.get('s', 0)}\n"
)
SLOW_IMPORT = "import time\ntime.sleep(40)\ndef handler(event, context):\n    return 1\n"


def inline(source: str) -> dict[str, Any]:
    return {"inline": {"main.py": source}}


@pytest.fixture
def pod(nest_pool: list[dict[str, Any]]) -> dict[str, Any]:
    return nest_pool[-1]  # the other suites mostly use the first pod


def pod_now(kubectl: Kubectl, pod: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = kubectl.json("get", "pod", pod["metadata"]["name"], "-n", "nest-system")
    return found


def runtime_container(kubectl: Kubectl, pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod_now(kubectl, pod)["status"]["containerStatuses"]
    found: dict[str, Any] = next(c for c in statuses if c["name"] == "runtime")
    return found


def ready_since(kubectl: Kubectl, pod: dict[str, Any]) -> str | None:
    """When the pod last became Ready (None: it is not Ready now)."""
    for condition in pod_now(kubectl, pod)["status"].get("conditions") or []:
        if condition["type"] == "Ready":
            return str(condition["lastTransitionTime"]) if condition["status"] == "True" else None
    return None


def try_invoke(obj: dict[str, Any], event: Any) -> int | None:
    """The status code, or None when the connection dropped (the runtime died mid-call)."""
    try:
        return invoke(obj, event)[0]
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError):
        return None


def events_of(kubectl: Kubectl, name: str) -> str:
    return kubectl.run("get", "events", f"--field-selector=involvedObject.name={name}").stdout


def restarted(kubectl: Kubectl, name: str, timeout: float = 120) -> dict[str, Any]:
    return sandbox_where(
        kubectl, name,
        lambda s: s.get("phase") == "Running" and s.get("restartCount", 0) >= 1,
        "Running again, its restart counted", timeout,
    )  # fmt: skip


def failed(kubectl: Kubectl, name: str, timeout: float = 120) -> dict[str, Any]:
    return sandbox_where(
        kubectl, name, lambda s: s.get("phase") == "Failed", "phase Failed", timeout
    )


def test_os_exit_at_invoke_fails_the_culprit_and_restarts_the_neighbour_naming_it(
    kubectl: Kubectl, pod: dict[str, Any]
) -> None:
    bind(kubectl, "culprit", pod, inline(EXIT_AT_INVOKE), isolation="namespace")
    bind(kubectl, "neighbour", pod, inline(ECHO), isolation="namespace")
    culprit = running(kubectl, "culprit")
    running(kubectl, "neighbour")
    assert try_invoke(culprit, {}) is None, "os._exit ends the shared runtime mid-call"
    status = failed(kubectl, "culprit")["status"]
    assert status["reason"] == "RuntimeCrash"
    assert "running a call" in status["message"] and "not started in one again" in status["message"]
    neighbour = restarted(kubectl, "neighbour")
    assert invoke(neighbour, {})[0] == 200
    culprit_name = f"{kubectl.namespace}/culprit"
    assert "crashed (no fatal signal" in events_of(kubectl, "neighbour")
    assert f"while running sandbox {culprit_name}; restarted" in events_of(kubectl, "neighbour")
    assert "RuntimeCrash" in events_of(kubectl, "culprit")


def test_os_exit_at_import_does_not_crash_loop_the_pod(
    kubectl: Kubectl, pod: dict[str, Any]
) -> None:
    bind(kubectl, "steady", pod, inline(ECHO), isolation="namespace")
    running(kubectl, "steady")
    before = runtime_container(kubectl, pod)["restartCount"]
    bind(kubectl, "importer", pod, inline(EXIT_AT_IMPORT), isolation="namespace")
    status = failed(kubectl, "importer")["status"]
    assert status["reason"] == "RuntimeCrash" and "importing" in status["message"]
    steady = restarted(kubectl, "steady")
    assert invoke(steady, {})[0] == 200
    wait_for(lambda: runtime_container(kubectl, pod)["ready"], timeout=60, what="runtime Ready")
    assert runtime_container(kubectl, pod)["restartCount"] == before + 1, "one crash, no loop"
    assert f"{kubectl.namespace}/importer" in events_of(kubectl, "steady")


def test_64_hung_calls_of_one_function_leave_the_neighbours_answering(
    kubectl: Kubectl, pod: dict[str, Any]
) -> None:
    bind(kubectl, "hanger", pod, inline(SLEEPER), isolation="namespace",
         concurrency=64, timeoutSeconds=2)  # fmt: skip
    bind(kubectl, "neighbour", pod, inline(ECHO), isolation="namespace")
    hanger = running(kubectl, "hanger")
    neighbour = running(kubectl, "neighbour")
    with ThreadPoolExecutor(64) as calls:
        answers = [calls.submit(try_invoke, hanger, {"s": 20}) for _ in range(64)]
        next(as_completed(answers, timeout=60))  # the first calls overran their timeout
        # Their threads still sleep; the neighbour's calls get threads all the same.
        for _ in range(3):
            assert invoke(neighbour, {})[0] == 200
        codes = [a.result(timeout=60) for a in answers]
    assert set(codes) <= {503, 504}, codes
    assert 1 <= codes.count(504) <= 16, "one function holds at most its thread quota"


def test_a_40s_import_fails_on_its_timeout_and_the_pod_stays_ready(
    kubectl: Kubectl, pod: dict[str, Any]
) -> None:
    bind(kubectl, "neighbour", pod, inline(ECHO), isolation="namespace")
    neighbour = running(kubectl, "neighbour")
    since = ready_since(kubectl, pod)
    restarts = runtime_container(kubectl, pod)["restartCount"]
    assert since is not None
    bind(kubectl, "slowpoke", pod, inline(SLOW_IMPORT), isolation="namespace", timeoutSeconds=2)
    status = sandbox_where(
        kubectl, "slowpoke", lambda s: "ImportTimeout" in (s.get("message") or ""),
        "its status to name the ImportTimeout",
    )["status"]  # fmt: skip
    assert status["phase"] in ("Starting", "Failed")
    assert "within the function's 2s timeout" in events_of(kubectl, "slowpoke")
    assert invoke(neighbour, {})[0] == 200, "the runtime serves while the import still sleeps"
    assert ready_since(kubectl, pod) == since, "the pod never left Ready"
    assert runtime_container(kubectl, pod)["restartCount"] == restarts


def test_a_sandbox_whose_calls_hang_is_unhealthy_and_restarted(
    kubectl: Kubectl, pod: dict[str, Any]
) -> None:
    bind(kubectl, "stuck", pod, inline(SLEEPER), isolation="namespace", timeoutSeconds=1)
    stuck = running(kubectl, "stuck")
    assert invoke(stuck, {"s": 8})[0] == 504
    stuck = restarted(kubectl, "stuck")  # once its hung thread has returned
    assert invoke(stuck, {"s": 0})[0] == 200
    events = events_of(kubectl, "stuck")
    assert "Unhealthy" in events and "still running past the 1s timeout" in events

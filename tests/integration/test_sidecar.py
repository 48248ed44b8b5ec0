"""The sidecar on real pool pods from deploy/: the test plays scheduler by binding Sandboxes.

Each test binds Sandboxes to a pool pod the way the operator does (spec.podName plus the pool and
pod-uid labels and the sidecar's finalizer, in one write) and watches what the sidecar makes of
them through the API server, invoking the sandboxes at the pod's data-plane address.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from nest_cluster.runner.process import host_pid
from tests.conformance.support import reachable_by_sandboxes
from tests.dataplane import signed_headers
from tests.kube import Kubectl, wait_for

API = "nest.sandbox.dev/v1alpha1"
FINALIZER = "nest.sandbox.dev/sidecar"
ROOT = Path(__file__).resolve().parents[2]
PID_HANDLER = (
    "import os\n"
    "def handler(event, context):\n"
    "    return {'pid': os.getpid(), 'echo': event, 'fn': context.function_name}\n"
)


def bound_manifest(
    name: str, pod: dict[str, Any], source: dict[str, Any], finalizer: bool = True, **function: Any
) -> str:
    """A Sandbox bound as the scheduler binds it: the sidecar's finalizer comes with the binding
    (the sidecar never adds it; admission refuses a binding without it)."""
    meta = pod["metadata"]
    manifest = {
        "apiVersion": API,
        "kind": "Sandbox",
        "metadata": {
            "name": name,
            "labels": {"nest.sandbox.dev/pool": "default", "nest.sandbox.dev/pod-uid": meta["uid"]},
            "finalizers": [FINALIZER] if finalizer else [],
        },
        "spec": {
            "podName": meta["name"],
            "podNamespace": meta["namespace"],
            "function": {"handler": "main:handler", "source": source, **function},
        },
    }
    return yaml.safe_dump(manifest)


def bind(
    kubectl: Kubectl, name: str, pod: dict[str, Any], source: dict[str, Any], **function: Any
) -> None:
    kubectl.apply(bound_manifest(name, pod, source, **function))


def sandbox_where(
    kubectl: Kubectl,
    name: str,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 60,
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj: dict[str, Any] = kubectl.json("get", "sbx", name)
        return obj if check(obj.get("status") or {}) else None

    return wait_for(probe, timeout=timeout, what=f"sandbox {name}: {what}")


def running(kubectl: Kubectl, name: str, timeout: float = 60) -> dict[str, Any]:
    return sandbox_where(
        kubectl, name, lambda s: s.get("phase") == "Running", "phase Running", timeout
    )


def invoke(obj: dict[str, Any], event: Any) -> tuple[int, Any]:
    status = obj["status"]
    url = f"http://{status['podIP']}:{status['port']}/v1/sandboxes/{obj['metadata']['uid']}/invoke"
    body = json.dumps(event).encode()
    request = urllib.request.Request(url, data=body, headers=signed_headers(url, body))
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


@pytest.fixture
def pod(nest_pool: list[dict[str, Any]]) -> dict[str, Any]:
    return nest_pool[0]


@pytest.fixture(scope="module")
def code_server() -> Iterator[str]:
    """A local HTTP server for `url` code sources."""
    blobs = {"/hello.py": PID_HANDLER.encode()}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = blobs.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _sources(code_server: str, namespace_dir: Path) -> dict[str, dict[str, Any]]:
    sha = hashlib.sha256(PID_HANDLER.encode()).hexdigest()
    return {
        "inline": {"inline": {"main.py": PID_HANDLER}},
        "configmap": {"configMap": {"name": "code"}},
        "url": {"url": f"{code_server}/hello.py", "sha256": sha},
        "path": {"path": str(namespace_dir)},
    }


@pytest.mark.parametrize("isolation", ["namespace", "subprocess"])
def test_every_code_source_runs_and_answers(
    kubectl: Kubectl, pod: dict[str, Any], code_server: str, tmp_path: Path, isolation: str
) -> None:
    kubectl.run("create", "configmap", "code", f"--from-literal=main.py={PID_HANDLER}")
    (tmp_path / "main.py").write_text(PID_HANDLER)
    reachable_by_sandboxes(tmp_path)  # a `path` source is read by the sandbox's own uid
    sources = _sources(code_server, tmp_path)
    for kind, source in sources.items():
        handler = "hello:handler" if kind == "url" else "main:handler"
        bind(kubectl, f"{kind}-{isolation}", pod, source, isolation=isolation, handler=handler)
    for kind in sources:
        obj = running(kubectl, f"{kind}-{isolation}")
        assert obj["status"]["podIP"] == pod["status"]["podIP"]
        conditions = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
        isolated = "True" if isolation == "subprocess" else "False"  # namespace: in-process
        assert conditions == {
            "Scheduled": "True", "CodeReady": "True", "Ready": "True", "Isolated": isolated,
        }  # fmt: skip
        code, body = invoke(obj, {"kind": kind})
        assert code == 200, body
        assert body["echo"] == {"kind": kind}
        assert body["fn"] == f"{kubectl.namespace}/{kind}-{isolation}"


BROKEN = {
    "syntax": ("def handler(event, context)\n    return 1\n", "SyntaxError"),
    "import": ("import no_such_module_anywhere\ndef handler(e, c):\n    return 1\n", "ImportError"),
    "missing": ("def other(event, context):\n    return 1\n", "HandlerNotFound"),
}


def _container_status(kubectl: Kubectl, pod: dict[str, Any], name: str) -> dict[str, Any]:
    fresh = kubectl.json("get", "pod", pod["metadata"]["name"], "-n", "nest-system")
    statuses = fresh["status"]["containerStatuses"]
    found: dict[str, Any] = next(c for c in statuses if c["name"] == name)
    return found


@pytest.mark.parametrize("isolation", ["namespace", "subprocess"])
def test_broken_code_fails_with_reason_and_the_sidecar_survives(
    kubectl: Kubectl, pod: dict[str, Any], isolation: str
) -> None:
    sidecar_restarts = _container_status(kubectl, pod, "sidecar")["restartCount"]
    for name, (code, _) in BROKEN.items():
        bind(
            kubectl, f"{name}-{isolation}", pod, {"inline": {"main.py": code}}, isolation=isolation
        )
    for name, (_, reason) in BROKEN.items():
        obj = sandbox_where(
            kubectl, f"{name}-{isolation}", lambda s: s.get("phase") == "Failed", "phase Failed"
        )
        assert obj["status"]["reason"] == reason
        assert obj["status"]["message"]
        ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False" and ready["reason"] == reason
    assert _container_status(kubectl, pod, "sidecar")["restartCount"] == sidecar_restarts


def test_wrong_sha256_is_a_checksum_mismatch(
    kubectl: Kubectl, pod: dict[str, Any], code_server: str
) -> None:
    source = {"url": f"{code_server}/hello.py", "sha256": "0" * 64}
    bind(kubectl, "pinned", pod, source, handler="hello:handler")
    obj = sandbox_where(kubectl, "pinned", lambda s: s.get("phase") == "Failed", "phase Failed")
    assert obj["status"]["reason"] == "ChecksumMismatch"
    code_ready = next(c for c in obj["status"]["conditions"] if c["type"] == "CodeReady")
    assert code_ready["status"] == "False" and code_ready["reason"] == "ChecksumMismatch"
    assert "sha256 is" in obj["status"]["message"]


def test_memory_hog_is_oomkilled_and_restarted_with_back_off(
    kubectl: Kubectl, pod: dict[str, Any]
) -> None:
    hog = "HOG = b'x' * (256 << 20)\ndef handler(event, context):\n    return len(HOG)\n"
    bind(
        kubectl, "hog", pod, {"inline": {"main.py": hog}},
        isolation="subprocess", resources={"memory": "64Mi"},
    )  # fmt: skip
    obj = sandbox_where(
        kubectl,
        "hog",
        lambda s: s.get("reason") == "CrashLoopBackOff" and s.get("restartCount", 0) >= 1,
        "CrashLoopBackOff after at least one restart",
    )
    assert "OOMKilled" in obj["status"]["message"]
    events = kubectl.run("get", "events", "--field-selector=involvedObject.name=hog").stdout
    assert "BackOff" in events and "OOMKilled" in events


def test_a_timeout_restart_is_counted_named_and_recorded(
    kubectl: Kubectl, pod: dict[str, Any]
) -> None:
    """The sidecar alone restarts: a timed-out sandbox shows restartCount, reason and Events."""
    slow = (
        "import time\n"
        "def handler(event, context):\n"
        "    time.sleep(event.get('s', 0))\n"
        "    return 1\n"
    )
    bind(
        kubectl, "sleepy", pod, {"inline": {"main.py": slow}},
        isolation="subprocess", timeoutSeconds=1,
    )  # fmt: skip
    obj = running(kubectl, "sleepy")
    code, _ = invoke(obj, {"s": 30})
    assert code == 504
    obj = sandbox_where(
        kubectl,
        "sleepy",
        lambda s: s.get("phase") == "Running" and s.get("restartCount", 0) >= 1,
        "Running again with the restart counted",
    )
    code, _ = invoke(obj, {"s": 0})
    assert code == 200
    events = kubectl.run("get", "events", "--field-selector=involvedObject.name=sleepy").stdout
    assert "Timeout" in events and "BackOff" in events


def test_a_binding_without_the_sidecar_finalizer_is_refused(
    kubectl: Kubectl, pod: dict[str, Any]
) -> None:
    """The finalizer has one owner, the binder: even a cluster-admin binding must carry it."""
    manifest = bound_manifest("bare", pod, {"inline": {"main.py": PID_HANDLER}}, finalizer=False)
    refused = kubectl.run("apply", "-f", "-", input=manifest, check=False)
    assert refused.returncode != 0
    assert f"metadata.finalizers: a binding must carry the {FINALIZER} finalizer" in refused.stderr
    assert kubectl.run("get", "sbx", "bare", check=False).returncode != 0


def test_deleting_a_sandbox_stops_it_and_releases_the_finalizer(
    kubectl: Kubectl, pod: dict[str, Any]
) -> None:
    bind(kubectl, "doomed", pod, {"inline": {"main.py": PID_HANDLER}}, isolation="subprocess")
    obj = running(kubectl, "doomed")
    assert obj["metadata"]["finalizers"] == [FINALIZER]  # the binding's, none added
    _, body = invoke(obj, {})
    pid = on_host(kubectl, pod, body["pid"])
    assert _alive(pid)
    kubectl.run("delete", "sbx", "doomed", "--wait=false")
    wait_for(
        lambda: kubectl.run("get", "sbx", "doomed", check=False).returncode != 0,
        what="the Sandbox object to be gone",
    )
    assert not _alive(pid), "the sandbox process outlived its Sandbox"
    events = kubectl.run("get", "events", "--field-selector=involvedObject.name=doomed").stdout
    assert "Killing" in events


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status").read_text()
    return "State:\tZ" not in status


def _container_pid(status: dict[str, Any]) -> int:
    return int(status["containerID"].removeprefix("nest://"))


def on_host(kubectl: Kubectl, pod: dict[str, Any], pid: int) -> int:
    """A sandbox reports its pid in the runtime container's PID namespace; the host's pid."""
    runtime = _container_pid(_container_status(kubectl, pod, "runtime"))
    found = host_pid(runtime, pid)
    assert found is not None, f"pid {pid} is not in the runtime container"
    return found


def test_sidecar_kill_adopts_running_sandboxes(kubectl: Kubectl, pod: dict[str, Any]) -> None:
    bind(kubectl, "survivor", pod, {"inline": {"main.py": PID_HANDLER}}, isolation="subprocess")
    obj = running(kubectl, "survivor")
    _, before = invoke(obj, {})
    sidecar = _container_status(kubectl, pod, "sidecar")
    os.kill(_container_pid(sidecar), signal.SIGKILL)
    wait_for(
        lambda: (
            (s := _container_status(kubectl, pod, "sidecar"))["restartCount"]
            > sidecar["restartCount"]
            and s["ready"]
        ),
        timeout=60,
        what="the sidecar to come back Ready",
    )
    obj = running(kubectl, "survivor")
    _, after = invoke(obj, {})
    assert after["pid"] == before["pid"], "the sandbox was restarted instead of adopted"
    assert obj["status"]["restartCount"] == 0


def test_runtime_kill_recreates_sandboxes_and_counts_the_restart(
    kubectl: Kubectl, pod: dict[str, Any]
) -> None:
    bind(kubectl, "phoenix", pod, {"inline": {"main.py": PID_HANDLER}}, isolation="subprocess")
    obj = running(kubectl, "phoenix")
    _, before = invoke(obj, {})
    old_process = on_host(kubectl, pod, before["pid"])
    runtime = _container_status(kubectl, pod, "runtime")
    os.kill(_container_pid(runtime), signal.SIGKILL)
    obj = sandbox_where(
        kubectl,
        "phoenix",
        lambda s: s.get("phase") == "Running" and s.get("restartCount", 0) >= 1,
        "Running again with its restart counted",
    )
    code, after = invoke(obj, {})
    assert code == 200
    assert on_host(kubectl, pod, after["pid"]) != old_process
    assert not _alive(old_process), "the old sandbox process outlived its runtime"


def test_kubectl_get_and_describe_tell_the_story(kubectl: Kubectl, pod: dict[str, Any]) -> None:
    bind(kubectl, "storied", pod, {"inline": {"main.py": PID_HANDLER}}, isolation="namespace")
    bind(kubectl, "broken", pod, {"inline": {"main.py": BROKEN["import"][0]}})
    running(kubectl, "storied")
    sandbox_where(kubectl, "broken", lambda s: s.get("phase") == "Failed", "phase Failed")
    table = kubectl.run("get", "sbx").stdout
    storied = next(line for line in table.splitlines() if line.startswith("storied"))
    assert "Running" in storied and pod["metadata"]["name"] in storied
    broken = next(line for line in table.splitlines() if line.startswith("broken"))
    assert "Failed" in broken and "ImportError" in broken
    described = kubectl.run("describe", "sbx", "broken").stdout
    for text in ("ImportError", "no_such_module_anywhere", "Events:", "Failed"):
        assert text in described

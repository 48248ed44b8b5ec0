"""Code that cannot be fetched or written, on real pool pods: a reason and a message, never stuck;
and code nobody runs any more leaves the pod's cache.

Before (issue 10): an archive with a 300-byte file name or `a` beside `a/b.py` killed the
sidecar's worker (the Sandbox stayed Pending); a URL that hung kept its Sandbox `Starting` for
five minutes, then said `CodeFetchFailed:` with an empty message; the code cache was never pruned.
The pool runs with the sidecar's default flags (30 s fetch deadlines, 30 s idle time in the cache),
so these tests wait on those, with deadlines.

And a pod's runtime killed with -9 (issue 13): until it is back (the runner restarts it in 5-18 s)
its sandboxes are Ready=False (`RuntimeUnavailable`, still Running) and out of the SandboxEndpoints,
so the gateway sends them nothing; once back, each is restarted (counted) and Ready again.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
from kubernetes import client, watch

from nest_api import convert
from nest_api import models as m
from nest_sidecar.fetcher import files_digest
from tests.integration.test_gateway import function, operator_active  # noqa: F401 - fixture
from tests.integration.test_sidecar import bind, running, sandbox_where
from tests.kube import Kubectl, wait_for

HANDLER = "def handler(event, context):\n    return {'ok': True}\n"


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


BLOBS = {
    "/clash.zip": _zip({"a": "", "a/b.py": HANDLER, "main.py": HANDLER}),
    "/long.zip": _zip({"a" * 300 + ".py": HANDLER, "main.py": HANDLER}),
}


@pytest.fixture
def pod(nest_pool: list[dict[str, Any]]) -> dict[str, Any]:
    return nest_pool[0]


@pytest.fixture
def server() -> Iterator[str]:
    """Serves BLOBS; /hang.zip accepts the request and never answers (until the test ends)."""
    done = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/hang.zip":
                done.wait(120)
                return
            body = BLOBS.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    done.set()
    httpd.shutdown()
    httpd.server_close()


def _sidecar(kubectl: Kubectl, pod: dict[str, Any]) -> dict[str, Any]:
    fresh = kubectl.json("get", "pod", pod["metadata"]["name"], "-n", "nest-system")
    found: dict[str, Any] = next(
        c for c in fresh["status"]["containerStatuses"] if c["name"] == "sidecar"
    )
    return found


def _code_cache(kubectl: Kubectl, pod: dict[str, Any]) -> Path:
    """The pod's code cache as its sidecar sees it (the container's mounts, through /proc)."""
    pid = int(_sidecar(kubectl, pod)["containerID"].removeprefix("nest://"))
    return Path(f"/proc/{pid}/root/var/lib/nest/code")


def test_archive_files_the_file_system_refuses_fail_naming_them(
    kubectl: Kubectl, pod: dict[str, Any], server: str
) -> None:
    restarts = _sidecar(kubectl, pod)["restartCount"]
    for name in ("clash", "long"):
        digest = hashlib.sha256(BLOBS[f"/{name}.zip"]).hexdigest()
        bind(kubectl, name, pod, {"url": f"{server}/{name}.zip", "sha256": digest})
    expected = {"clash": "'a/b.py' is inside 'a', which is a file", "long": "(303 bytes)"}
    for name, text in expected.items():
        obj = sandbox_where(kubectl, name, lambda s: s.get("phase") == "Failed", "phase Failed")
        assert obj["status"]["reason"] == "InvalidCodeArchive"
        assert text in obj["status"]["message"]
        code = next(c for c in obj["status"]["conditions"] if c["type"] == "CodeReady")
        assert code["status"] == "False" and text in code["message"]
    assert _sidecar(kubectl, pod)["restartCount"] == restarts


def test_a_url_that_hangs_fails_at_the_read_deadline_and_deletes_at_once(
    kubectl: Kubectl, pod: dict[str, Any], server: str
) -> None:
    url = f"{server}/hang.zip"
    bind(kubectl, "hangs", pod, {"url": url, "sha256": "0" * 64})
    obj = sandbox_where(
        kubectl,
        "hangs",
        lambda s: s.get("reason") == "CodeFetchFailed",
        "reason CodeFetchFailed",
        timeout=90,
    )
    assert obj["status"]["phase"] == "Starting"  # retried with back-off, as any fetch failure
    assert f"CodeFetchFailed: GET {url}: read timed out after 30s" in obj["status"]["message"]
    events = kubectl.run("get", "events", "--field-selector=involvedObject.name=hangs").stdout
    assert "read timed out after 30s" in events
    # The retry hangs again; deleting the Sandbox does not wait for its deadline.
    kubectl.run("delete", "sbx", "hangs", "--wait=false")
    wait_for(
        lambda: kubectl.run("get", "sbx", "hangs", check=False).returncode != 0,
        timeout=15,
        what="the Sandbox to be gone while its download still hangs",
    )


def test_code_nobody_runs_leaves_the_cache(kubectl: Kubectl, pod: dict[str, Any]) -> None:
    code = f"{HANDLER}# {uuid.uuid4()}\n"  # code of its own: no other sandbox shares the entry
    digest = files_digest({"main.py": code.encode()})
    bind(kubectl, "cached", pod, {"inline": {"main.py": code}}, isolation="subprocess")
    obj = running(kubectl, "cached")
    cache = _code_cache(kubectl, pod)
    assert (cache / digest / "main.py").read_text() == code
    assert (cache / ".in-use" / obj["metadata"]["uid"]).read_text() == digest
    kubectl.run("delete", "sbx", "cached")
    wait_for(
        lambda: not (_code_cache(kubectl, pod) / digest).exists(),
        timeout=120,
        what=f"code {digest[:12]} to leave the cache (30 s after its last sandbox went)",
    )
    assert not (_code_cache(kubectl, pod) / ".in-use" / obj["metadata"]["uid"]).exists()


GROUP, VERSION = "nest.sandbox.dev", "v1alpha1"


def _ready(sandbox: dict[str, Any]) -> dict[str, Any]:
    conditions = (sandbox.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), {})


class History:
    """Every state the API server had of the namespace's Sandboxes and of one SandboxEndpoints,
    with the moment this process heard of it: a poll could miss a state that lasts a second."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.namespace, self.name = namespace, name
        self.lock = threading.Lock()
        self.sandboxes: list[tuple[float, dict[str, Any]]] = []
        self.endpoints: list[tuple[float, set[str]]] = []  # the Ready addresses' sandboxes
        self.watches = [watch.Watch(), watch.Watch()]
        self.threads = [
            threading.Thread(target=self._follow, args=(w, plural), daemon=True)
            for w, plural in zip(self.watches, ("sandboxes", "sandboxendpoints"), strict=True)
        ]

    def _follow(self, w: watch.Watch, plural: str) -> None:
        extra = {"field_selector": f"metadata.name={self.name}"} if plural != "sandboxes" else {}
        stream = w.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION,
                          self.namespace, plural, timeout_seconds=600, **extra)  # fmt: skip
        try:
            for event in stream:
                obj, now = event["object"], time.monotonic()
                with self.lock:
                    if plural == "sandboxes":
                        self.sandboxes.append((now, obj))
                    else:
                        ready = (obj.get("status") or {}).get("ready") or []
                        self.endpoints.append((now, {a["sandbox"] for a in ready}))
        except Exception:  # closed by stop(); a broken watch shows as states never seen
            pass

    def __enter__(self) -> History:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.watches:
            w.stop()

    def first(self, name: str, check: Callable[[dict[str, Any]], bool]) -> float | None:
        """When sandbox `name` was first seen in a state `check` accepts."""
        with self.lock:
            return next((t for t, o in self.sandboxes
                         if o["metadata"]["name"] == name and check(o)), None)  # fmt: skip

    def ready_sets(self) -> list[tuple[float, set[str]]]:
        with self.lock:
            return list(self.endpoints)


def _runtime_process(system: Kubectl, pod: str) -> psutil.Process:
    """The pod's nest-runtime: the child of its runtime container's shim (containerID = the
    shim's pid on this host; bench.chaos_faults.container_process finds it by HOSTNAME)."""
    status = system.json("get", "pod", pod)["status"]["containerStatuses"]
    shim = int(next(c for c in status if c["name"] == "runtime")["containerID"].split("//")[1])
    for child in psutil.Process(shim).children():
        cmdline = child.cmdline()
        if len(cmdline) > 1 and Path(cmdline[1]).name == "nest-runtime":
            return child
    raise AssertionError(f"no nest-runtime process under the shim {shim} of {pod}")


def test_a_killed_runtime_takes_its_sandboxes_out_of_the_endpoints_until_it_is_back(
    kubectl: Kubectl,
    api: client.ApiClient,
    nest_pool: list[dict[str, Any]],
    operator_active: bool,  # noqa: F811
) -> None:
    if not operator_active:
        pytest.skip("SandboxEndpoints need the operator (deploy/operator/)")
    name, ns = "outage", kubectl.namespace
    body = convert.deployment_for(ns, m.FunctionCreate.model_validate(function(name, replicas=2)))
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, ns, "sandboxdeployments", body.to_k8s()
    )

    def serving() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = kubectl.json("get", "sbx")["items"]
        ready = [s for s in items if s["status"].get("phase") == "Running"
                 and _ready(s).get("status") == "True"]  # fmt: skip
        return ready if len(items) == len(ready) == 2 else None

    before = wait_for(serving, timeout=120, what="two Ready sandboxes")
    victim = before[0]["spec"]["podName"]
    on_victim = {s["metadata"]["name"] for s in before if s["spec"]["podName"] == victim}
    elsewhere = {s["metadata"]["name"] for s in before} - on_victim
    restarts = {s["metadata"]["name"]: s["status"].get("restartCount", 0) for s in before}
    system = Kubectl(kubectl.binary, kubectl.kubeconfig, "nest-system")
    with History(api, ns, name) as history:
        wait_for(lambda: len(history.ready_sets()) > 0 and len(history.ready_sets()[-1]) == 2,
                 timeout=60, what="the endpoints to list both sandboxes Ready")  # fmt: skip
        runtime = _runtime_process(system, victim)
        runtime.kill()  # SIGKILL
        killed = time.monotonic()

        # While it is gone: still Running, not Ready, and no restart counted yet.
        def unavailable(sandbox: str) -> Callable[[dict[str, Any]], bool]:
            def check(o: dict[str, Any]) -> bool:
                ready, status = _ready(o), o.get("status") or {}
                return (
                    status.get("phase") == "Running"
                    and ready.get("status") == "False"
                    and ready.get("reason") == "RuntimeUnavailable"
                    and "has not answered" in (ready.get("message") or "")
                    and status.get("restartCount", 0) == restarts[sandbox]
                )

            return check

        def all_unavailable() -> bool:
            return all(history.first(s, unavailable(s)) is not None for s in on_victim)

        wait_for(all_unavailable, timeout=30,
                 what=f"{sorted(on_victim)} reported Ready=False, RuntimeUnavailable")  # fmt: skip

        def left() -> float | None:
            return next((t for t, ready in history.ready_sets()
                         if t > killed and not ready & on_victim), None)  # fmt: skip

        out_at = wait_for(left, timeout=30, what=f"{sorted(on_victim)} out of the endpoints")

        # Back: the restarted runtime runs nothing, so each is restarted (counted once) and
        # Ready again, and listed again.
        def back() -> list[dict[str, Any]] | None:
            found = serving()
            if found is None:
                return None
            counts = {s["metadata"]["name"]: s["status"].get("restartCount", 0) for s in found}
            want = {n: restarts[n] + (n in on_victim) for n in restarts}
            return found if counts == want else None

        wait_for(back, timeout=120, what="both Ready again, the victim's restarted once each")
        wait_for(lambda: history.ready_sets()[-1][1] == set(restarts), timeout=60,
                 what="both listed Ready in the endpoints again")  # fmt: skip
        assert _runtime_process(system, victim).pid != runtime.pid
        # They left the endpoints during the outage, not only once the runtime was back.
        for sandbox in on_victim:
            count = restarts[sandbox]

            def counted(o: dict[str, Any], count: int = count) -> bool:
                return bool(o["status"].get("restartCount", 0) > count)

            restarted = history.first(sandbox, counted)
            assert restarted is not None and out_at < restarted
        # A sandbox on the other pod was never taken out.
        assert all(elsewhere <= ready for t, ready in history.ready_sets() if t > killed)

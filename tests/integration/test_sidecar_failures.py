"""Code that cannot be fetched or written, on real pool pods: a reason and a message, never stuck;
and code nobody runs any more leaves the pod's cache.

Before (issue 10): an archive with a 300-byte file name or `a` beside `a/b.py` killed the
sidecar's worker (the Sandbox stayed Pending); a URL that hung kept its Sandbox `Starting` for
five minutes, then said `CodeFetchFailed:` with an empty message; the code cache was never pruned.
The pool runs with the sidecar's default flags (30 s fetch deadlines, 30 s idle time in the cache),
so these tests wait on those, with deadlines.
"""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nest_sidecar.fetcher import files_digest
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

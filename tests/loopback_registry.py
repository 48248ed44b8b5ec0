"""A real OCI registry for unit tests: Debian's docker-registry on a free loopback port.

The push and pull code talks to registries only through oras-py, so the honest test of it is a
real registry (CNCF distribution, the one `nest cluster up` runs), not a stand-in that answers
what the code expects. Each test module that asks for `registry` gets a process of its own with
its storage under the test's directory; the test is skipped where the binary is missing.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator

import pytest

from nest_cluster.registry import BINARY, config
from tests.kube import wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`127.0.0.1:PORT` of a registry that lives as long as the test module."""
    if shutil.which(BINARY) is None:
        pytest.skip(f"{BINARY} is not installed (Debian package docker-registry)")
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    path = root / "config.yml"
    path.write_text(json.dumps(config(root, port, "test-secret")))
    log = (root / "registry.log").open("w")
    proc = subprocess.Popen([BINARY, "serve", str(path)], stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and _answers(address), 30, f"registry {address}")
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()

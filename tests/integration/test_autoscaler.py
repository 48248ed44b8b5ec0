"""The autoscaler on the real cluster: up under a load loop, down to the minimum, then to zero,
and up from zero when the gateway holds a request (the autoscaler's write, not the gateway's).

Windows are shortened through the API (stable 4 s, panic 2 s, zero after 3 s) so the test runs
in seconds; the policy itself is the same one the unit tests drive with a fake clock.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

import yaml

from tests.dataplane import signed_headers
from tests.integration.test_gateway import (  # noqa: F401 - fixtures used by name
    Client,
    developer,
    gateway_url,
)
from tests.integration.test_gateway import function as gateway_function
from tests.kube import Kubectl, wait_for

SLOW = "import time\ndef handler(event, context):\n    time.sleep(0.2)\n    return {'ok': True}\n"


def function(min_replicas: int) -> dict[str, Any]:
    labels = {"app": "busy"}
    return {
        "apiVersion": "nest.sandbox.dev/v1alpha1",
        "kind": "SandboxDeployment",
        "metadata": {"name": "busy"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "function": {
                        "handler": "main:handler",
                        "isolation": "namespace",
                        "concurrency": 1,
                        "resources": {"memory": "16Mi", "cpu": "10m"},
                        "source": {"inline": {"main.py": SLOW}},
                    }
                },
            },
            "autoscaling": {
                "minReplicas": min_replicas,
                "maxReplicas": 4,
                "targetConcurrency": 1,
                "stableWindowSeconds": 4,
                "panicWindowSeconds": 2,
                "scaleToZeroAfterSeconds": 3,
            },
        },
    }


class Load:
    """`workers` clients invoking the function back to back through its ready endpoints."""

    def __init__(self, kubectl: Kubectl, workers: int) -> None:
        self.kubectl = kubectl
        self.stop = threading.Event()
        self.answered = 0
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)
        ]

    def _run(self, worker: int) -> None:
        while not self.stop.is_set():
            ready = (self.kubectl.json("get", "sbxep", "busy").get("status") or {}).get(
                "ready"
            ) or []
            if not ready:
                continue
            a = ready[worker % len(ready)]
            url = f"http://{a['podIP']}:{a['port']}/v1/sandboxes/{a['uid']}/invoke"
            headers = signed_headers(url, b"{}")  # signed per request: the window is 60 s
            request = urllib.request.Request(url, data=b"{}", headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    if resp.status == 200:
                        self.answered += 1
            except (urllib.error.URLError, ConnectionError):
                continue

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def replicas(kubectl: Kubectl) -> int:
    return int(kubectl.json("get", "sbxd", "busy")["spec"]["replicas"])


def test_scales_up_under_load_then_down_to_min_then_to_zero(
    kubectl: Kubectl, nest_pool: list[Any]
) -> None:
    kubectl.apply(yaml.safe_dump(function(min_replicas=1)))
    wait_for(
        lambda: (kubectl.json("get", "sbxep", "busy").get("status") or {}).get("readyCount") == 1,
        timeout=60,
        what="one ready sandbox",
    )
    with Load(kubectl, workers=4) as load:
        wait_for(lambda: replicas(kubectl) >= 3, timeout=60, what="scale-up under load")
        assert load.answered > 0
    wait_for(lambda: replicas(kubectl) == 1, timeout=60, what="back to minReplicas when idle")
    patch = {"spec": {"autoscaling": {"minReplicas": 0}}}
    kubectl.run("patch", "sbxd", "busy", "--type=merge", "-p", json.dumps(patch))
    wait_for(lambda: replicas(kubectl) == 0, timeout=60, what="scale to zero when idle")
    events = kubectl.run("get", "events", "--field-selector=reason=Autoscaled").stdout
    assert "scale to zero" in events


def test_a_cold_start_is_the_autoscalers_scale_write_not_the_gateways(
    kubectl: Kubectl,
    developer: Client,  # noqa: F811
) -> None:
    """The gateway only reports the held request; the scale from zero is the autoscaler's.

    Kubernetes 1.20 does not record writes through /scale in managedFields, so the writer is
    told by what each writer leaves: the autoscaler records an `Autoscaled` Event for every
    scale it writes, the gateway none. Were the gateway still patching /scale on a cold start
    (before issue 12), its write would land first, the autoscaler would find the function
    already at one sandbox, and no "scaled from 0 to 1" Event would exist."""
    spec = gateway_function("wake", autoscaling={"minReplicas": 0, "maxReplicas": 2},
                            concurrency=8)  # fmt: skip
    assert developer.create(**spec).status_code == 201
    assert kubectl.json("get", "sbxd", "wake")["spec"]["replicas"] == 0
    resp = developer.invoke("wake", {"cold": True})  # held, then released once one is ready
    assert resp.status_code == 200, resp.text
    assert kubectl.json("get", "sbxd", "wake")["spec"]["replicas"] == 1

    def autoscaled() -> list[dict[str, Any]]:
        listed = kubectl.json(
            "get", "events", "--field-selector=involvedObject.name=wake,reason=Autoscaled"
        )
        return [e for e in listed["items"] if e["involvedObject"]["kind"] == "SandboxDeployment"]

    events = wait_for(autoscaled, what="the autoscaler's Event for its scale write")
    woken = [e for e in events if e["message"].startswith("scaled from 0 to 1: ")]
    assert len(woken) == 1, [(e["message"], e.get("count")) for e in events]
    assert woken[0].get("count", 1) == 1, "one cold start, one write"
    assert woken[0]["source"]["component"] == "nest-operator"

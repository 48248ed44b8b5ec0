"""What kopf's per-object handlers write to the API server, measured (docs/operator.md's table).

Why: the operator runs its own work queues instead of kopf's `on.create`/`on.update`/`on.delete`
handlers, and that choice is only as good as the write counts behind it. This runs a kopf
operator in-process on one fresh namespace with one of three handler sets ("raw": `on.event`
only, as the operator once used; "create-update"; "with-delete"), creates N labelled ConfigMaps,
patches each once and deletes them, and reports the writes on configmaps beyond the test's own
3N, from the API server's `apiserver_request_total`. Other work on a shared cluster that writes
ConfigMaps adds noise (a few hundredths per object).

    python -m bench.kopf_writes [raw|create-update|with-delete] [N]
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import uuid
from typing import Any

import kopf
from kubernetes import client

from bench.cluster import BenchCluster
from nest_kube import connect
from nest_operator.main import connection_info

LABEL = {"bench.nest.sandbox.dev/kopf-writes": "yes"}
WRITE_VERBS = ("POST", "PATCH", "PUT", "DELETE")
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def configmap_writes(bench: BenchCluster) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in bench.kubectl("get", "--raw", "/metrics").splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("resource") == "configmaps" and labels.get("verb") in WRITE_VERBS:
            counts[labels["verb"]] = counts.get(labels["verb"], 0.0) + float(match["value"])
    return counts


def register(mode: str, registry: kopf.OperatorRegistry, handled: list[str]) -> None:
    def handler(**_: Any) -> None:
        handled.append(mode)

    selector: dict[str, Any] = {"labels": LABEL, "registry": registry}
    if mode == "raw":
        kopf.on.event("", "v1", "configmaps", id="raw", **selector)(handler)
        return
    kopf.on.create("", "v1", "configmaps", id="create", **selector)(handler)
    kopf.on.update("", "v1", "configmaps", id="update", **selector)(handler)
    if mode == "with-delete":
        kopf.on.delete("", "v1", "configmaps", id="delete", **selector)(handler)


def measure(mode: str, n: int) -> dict[str, Any]:
    bench = BenchCluster()
    namespace = f"kopf-writes-{uuid.uuid4().hex[:5]}"
    core = bench.core
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    registry = kopf.OperatorRegistry()
    handled: list[str] = []
    register(mode, registry, handled)

    def login(**_: Any) -> kopf.ConnectionInfo:  # the operator's own credentials rule
        info: kopf.ConnectionInfo = connection_info(connect(bench.kubeconfig))
        return info

    kopf.on.login(registry=registry)(login)
    stop = threading.Event()
    ready = threading.Event()
    thread = threading.Thread(
        target=kopf.run, daemon=True,
        kwargs={"registry": registry, "namespaces": [namespace], "standalone": True,
                "stop_flag": stop, "ready_flag": ready},
    )  # fmt: skip
    thread.start()
    try:
        ready.wait(30)
        time.sleep(2)  # its watch starting; a pause, not a synchronisation of what is counted
        before = configmap_writes(bench)
        for i in range(n):
            body = client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=f"c{i}", labels=LABEL), data={"a": "1"}
            )
            core.create_namespaced_config_map(namespace, body)
        _settle(lambda: handled.count(mode) >= n)
        for i in range(n):
            core.patch_namespaced_config_map(f"c{i}", namespace, {"data": {"a": "2"}})
        _settle(lambda: handled.count(mode) >= 2 * n)
        for i in range(n):
            core.delete_namespaced_config_map(f"c{i}", namespace)
        selector = ",".join(f"{k}={v}" for k, v in LABEL.items())
        _settle(
            lambda: not core.list_namespaced_config_map(namespace, label_selector=selector).items
        )
        time.sleep(2)  # kopf's last patches of the deleted objects (finalizer removal) land
        after = configmap_writes(bench)
    finally:
        stop.set()
        thread.join(10)
        core.delete_namespace(namespace)
    ours = {"POST": n, "PATCH": n, "DELETE": n}
    extra = {v: after.get(v, 0.0) - before.get(v, 0.0) - ours.get(v, 0) for v in WRITE_VERBS}
    return {"mode": mode, "objects": n, "handled": len(handled),
            "extra_writes_per_object": {v: round(x / n, 2) for v, x in extra.items()}}  # fmt: skip


def _settle(done: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.2)  # polling the outcome, bounded by the deadline


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "create-update"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    print(json.dumps(measure(mode, n)))


if __name__ == "__main__":
    main()

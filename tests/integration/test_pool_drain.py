"""A graceful pool-pod delete under a request loop loses no request (issue 13, item 2).

The real thing end to end: a function with two replicas on the two pool pods, a request loop
through the gateway, then `kubectl delete pod` (default grace) of one pool pod. The operator
cordons it, has the replica set surge a replacement onto the other pod, takes the old sandbox
out of the SandboxEndpoints only once the replacement is Ready, and deletes it after its calls
drained; the sidecar and the runtime keep serving until then. Checked: no failed request, the
endpoints never listed fewer than two Ready sandboxes while the loop ran (the replacement was
Ready before the old one left), and after convergence exactly two sandboxes, none on the deleted
pod. The pool Deployment replaces the deleted pod; the test waits for two Ready pool pods again.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests
from kubernetes import client, watch

from tests.integration.test_gateway import (  # noqa: F401 - fixtures used by name
    Client,
    developer,
    function,
    gateway_url,
    operator_active,
)
from tests.kube import Kubectl, wait_for

pytestmark = pytest.mark.cluster
POOL_SELECTOR = "app.kubernetes.io/name=nest-pool"
CORDON = "nest.sandbox.dev/cordoned"  # crds.constants.CORDON_ANNOTATION
WORKERS = 3


@pytest.fixture(autouse=True)
def with_operator(operator_active: bool) -> None:  # noqa: F811
    if not operator_active:
        pytest.skip("waits for the operator (deploy/operator/ or `nest operator run`)")


class Loop:
    """Invocations through the gateway from a few threads until stopped; every answer kept."""

    def __init__(self, developer: Client, name: str) -> None:  # noqa: F811
        self.developer, self.name = developer, name
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers: list[tuple[int, str]] = []  # (status, body on failure)
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(WORKERS)]

    def _run(self) -> None:
        session = requests.Session()
        session.headers.update(self.developer.session.headers)
        url = self.developer.fn(f"/{self.name}:invoke")
        while not self.stop.is_set():
            try:
                resp = session.post(url, json={"n": 1}, timeout=60)
                answer = (resp.status_code, "" if resp.status_code == 200 else resp.text[:300])
            except requests.RequestException as exc:
                answer = (0, repr(exc))
            with self.lock:
                self.answers.append(answer)

    def __enter__(self) -> Loop:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=90)

    def count(self) -> int:
        with self.lock:
            return len(self.answers)

    def failed(self) -> list[tuple[int, str]]:
        with self.lock:
            return [a for a in self.answers if a[0] != 200]


class EndpointsLog:
    """Every state of the function's SandboxEndpoints, in the order the API server had them."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.namespace, self.name = namespace, name
        self.watch = watch.Watch()
        self.states: list[list[str]] = []  # the Ready sandboxes' names, per state
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        stream = self.watch.stream(
            self.custom.list_namespaced_custom_object, "nest.sandbox.dev", "v1alpha1",
            self.namespace, "sandboxendpoints", field_selector=f"metadata.name={self.name}",
            timeout_seconds=600,
        )  # fmt: skip
        try:
            for event in stream:
                ready = ((event["object"].get("status") or {}).get("ready")) or []
                with self.lock:
                    self.states.append(sorted(a["sandbox"] for a in ready))
        except Exception as exc:  # the connection closed under watch.stop(), or broke before
            if not self.stopped:
                self.error = exc

    stopped = False
    error: Exception | None = None

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped = True
        self.watch.stop()

    def seen(self) -> list[list[str]]:
        with self.lock:
            return list(self.states)


def sandboxes(kubectl: Kubectl) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl.json("get", "sandboxes")["items"]
    return items


def ready_pool_pods(core: client.CoreV1Api) -> list[str] | None:
    listed = core.list_namespaced_pod("nest-system", label_selector=POOL_SELECTOR)
    pods: list[dict[str, Any]] = core.api_client.sanitize_for_serialization(listed)["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    statuses = [s for p in live for s in (p.get("status") or {}).get("containerStatuses") or []]
    if len(live) != 2 or len(statuses) != 4 or not all(s["ready"] for s in statuses):
        return None
    return sorted(str(p["metadata"]["name"]) for p in live)


def test_a_graceful_pool_pod_delete_loses_no_request(
    developer: Client,  # noqa: F811
    kubectl: Kubectl,
    api: client.ApiClient,
    nest_pool: list[dict[str, Any]],
) -> None:
    core = client.CoreV1Api(api)
    name = "drained"
    body = function(name, replicas=1, isolation="subprocess", timeoutSeconds=5)
    created = developer.create(**body)
    assert created.status_code == 201, created.text
    # Spreading is a score, which code locality may outweigh on near-empty pods: cordon the
    # first replica's pod while the second is placed, so the two are on different pods.
    first = wait_for(lambda: [s for s in sandboxes(kubectl) if s["spec"].get("podName")],
                     timeout=120, what="the first sandbox bound")  # fmt: skip
    system = Kubectl(kubectl.binary, kubectl.kubeconfig, "nest-system")
    held = first[0]["spec"]["podName"]
    system.run("annotate", "pod", held, f"{CORDON}=true", "--overwrite")
    try:
        kubectl.run("patch", "sbxd", name, "--type=merge", "-p", '{"spec": {"replicas": 2}}')

        def both_bound() -> bool:
            items = sandboxes(kubectl)
            if len({s["spec"].get("podName") for s in items} - {None}) == 2:
                return True
            raise AssertionError([(s["spec"].get("podName"), s.get("status")) for s in items])

        wait_for(both_bound, timeout=120, what="the second sandbox bound to the other pod")
    finally:
        system.run("annotate", "pod", held, f"{CORDON}-")

    def ready(pods: int) -> list[dict[str, Any]] | None:
        """The two sandboxes, when both are Ready and on `pods` different pods."""
        items = sandboxes(kubectl)
        ready = [
            s for s in items
            if (s.get("status") or {}).get("phase") == "Running"
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in s["status"].get("conditions") or [])
        ]  # fmt: skip
        on = {s["spec"].get("podName") for s in ready}
        return ready if len(ready) == 2 and len(items) == 2 and len(on) == pods else None

    def spread() -> list[dict[str, Any]]:
        found = ready(2)
        if found is None:  # what they look like instead, for the timeout's message
            raise AssertionError([(s["spec"].get("podName"), s.get("status", {}).get("phase"))
                                  for s in sandboxes(kubectl)])  # fmt: skip
        return found

    before = wait_for(spread, timeout=120, what="two Ready sandboxes on two pool pods")
    victim = before[0]["spec"]["podName"]
    victim_uid = system.json("get", "pod", victim)["metadata"]["uid"]
    wait_for(lambda: developer.invoke(name, {}).status_code == 200, timeout=60, what="first answer")
    log = EndpointsLog(api, kubectl.namespace, name)
    log.start()
    wait_for(
        lambda: log.seen() and len(log.seen()[-1]) == 2, timeout=60,
        what="the endpoints watch to list both sandboxes Ready",
    )  # fmt: skip
    with Loop(developer, name) as loop:
        wait_for(lambda: loop.count() >= 20, timeout=60, what="the request loop to run")
        system.run("delete", "pod", victim, "--wait=false")  # the default grace period

        def converged() -> bool:
            try:
                core.read_namespaced_pod(victim, "nest-system")
                return False  # still terminating
            except client.exceptions.ApiException as exc:
                if exc.status != 404:
                    raise
            items = sandboxes(kubectl)
            on_victim = [s for s in items if s["spec"].get("podName") == victim]
            # Both on the pod that stayed (the new pool pod was not there to take one).
            return not on_victim and (ready(1) is not None or ready(2) is not None)

        wait_for(converged, timeout=150, what=f"{victim} gone and its sandbox replaced")
        seen_during = len(log.seen())
        done = loop.count()
        wait_for(lambda: loop.count() >= done + 10, timeout=60, what="requests after it")
    log.stop()

    assert log.error is None, log.error  # every state of the endpoints was seen
    assert loop.count() > 30
    assert not loop.failed(), loop.failed()[:10]
    states = log.seen()[:seen_during]
    old = before[0]["metadata"]["name"]
    assert any(old not in s for s in states), states  # it did leave the endpoints
    # Never fewer than two Ready: the replacement was listed before the old one left.
    assert min(len(s) for s in states) >= 2, states
    after = sandboxes(kubectl)
    assert old not in {s["metadata"]["name"] for s in after}
    assert len({s["metadata"]["name"] for s in after}) == 2  # none lost, none duplicated
    assert all(
        (s["metadata"].get("labels") or {}).get("nest.sandbox.dev/pod-uid") != victim_uid
        for s in after
    )
    wait_for(lambda: ready_pool_pods(core), timeout=180, what="two Ready pool pods again")

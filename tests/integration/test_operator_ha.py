"""The operator's two replicas (deploy/operator): one leads by Lease, every one serves the webhook.

Pods are local processes: a container's ID is `nest://<pid of its monitor>` (the runner's shim),
whose one child is the operator itself. kill -9 of the monitor ends the container at once (its
child dies with it), as a crashed node or an OOM kill would; SIGSTOP of the operator process
leaves a replica that is there but answers nothing (a hung process), for as long as the test
wants, which a killed one (restarted by the runner within seconds) is not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from crds import constants as c
from nest_kube.leader import holder_pod
from tests.integration.test_operator import example, settled
from tests.kube import Kubectl, wait_for

SYSTEM, LEASE, SERVICE = "nest-system", "nest-operator", "nest-operator-webhook"
SELECTOR = "app.kubernetes.io/name=nest-operator"
LEASE_DURATION = 15.0  # deploy/operator/deployment.yaml: NEST_LEADER_ELECT_LEASE_DURATION
# Beyond the Lease's duration, counted from the kill: the standby's write and these probes'
# own round trips (the last renewal, which the duration counts from, came before the kill).
TAKEOVER_SLACK = 1.0


def operator_pods(api: client.ApiClient) -> dict[str, dict[str, Any]]:
    """Live operator pods whose container runs and is Ready, by name."""
    listed = client.CoreV1Api(api).list_namespaced_pod(SYSTEM, label_selector=SELECTOR)
    pods: list[dict[str, Any]] = api.sanitize_for_serialization(listed)["items"]
    ready = {}
    for pod in pods:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        if pod["metadata"].get("deletionTimestamp") or not statuses:
            continue
        if statuses[0].get("ready") and statuses[0].get("containerID"):
            ready[pod["metadata"]["name"]] = pod
    return ready


def holder(api: client.ApiClient) -> tuple[str, str]:
    """(pod, renewTime) of the election Lease."""
    lease = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, SYSTEM)
    spec = api.sanitize_for_serialization(lease)["spec"]
    return holder_pod(spec.get("holderIdentity") or ""), str(spec.get("renewTime"))


def monitor_pid(pod: dict[str, Any]) -> int:
    status = pod["status"]["containerStatuses"][0]
    return int(status["containerID"].removeprefix("nest://"))


def program_pid(pod: dict[str, Any]) -> int:
    """The operator process: the monitor's one child."""
    monitor = monitor_pid(pod)
    children = Path(f"/proc/{monitor}/task/{monitor}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.fixture
def two_operators(api: client.ApiClient, nest_deployed: Path) -> dict[str, dict[str, Any]]:
    """Both replicas Ready and one of them holding a fresh Lease."""

    def ready() -> dict[str, dict[str, Any]] | None:
        pods = operator_pods(api)
        return pods if len(pods) == 2 and holder(api)[0] in pods else None

    pods: dict[str, dict[str, Any]] = wait_for(
        ready, timeout=120, what="two Ready operator replicas, one of them holding the Lease"
    )
    return pods


def test_a_standby_takes_the_lease_within_its_duration_when_the_leader_is_killed(
    api: client.ApiClient, kubectl: Kubectl, two_operators: dict[str, Any], nest_pool: list[Any]
) -> None:
    leader, _ = holder(api)
    (standby,) = set(two_operators) - {leader}
    os.kill(monitor_pid(two_operators[leader]), signal.SIGKILL)
    taken = wait_for(
        lambda: holder(api)[0] == standby,
        timeout=LEASE_DURATION + TAKEOVER_SLACK,
        interval=0.2,
        what=f"the standby {standby} to hold the Lease after {leader} was killed",
    )
    assert taken
    # The new leader's controllers work: a deployment applied after the kill becomes Ready.
    kubectl.apply(yaml.safe_dump(example(replicas=2, name="after-failover")))
    settled(kubectl, "after-failover", 2, timeout=120)
    # And the killed replica came back as a standby: the Lease stays where it is.
    wait_for(lambda: len(operator_pods(api)) == 2, timeout=120, what="the killed replica back")
    assert holder(api)[0] == standby


def _refusal(api: client.ApiClient, namespace: str) -> str | None:
    """SandboxRestriction's own refusal (403 quoting it), None for anything else: an API server
    that could not reach the webhook answers 500 "failed calling webhook"."""
    body = {
        "apiVersion": c.API_VERSION,
        "kind": "Sandbox",
        "metadata": {"name": "ha-probe"},
        "spec": {
            "pool": f"nope-{uuid.uuid4().hex[:6]}",
            "function": {"handler": "main:handler", "source": {"path": "/nonexistent"}},
        },
    }
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.SANDBOX_PLURAL, body, dry_run="All"
        )
    except ApiException as exc:
        if exc.status == 403 and "does not exist" in str(exc.body):
            return str(exc.body)
        return None
    raise AssertionError("a Sandbox naming a SandboxPool that does not exist was admitted")


def route(api: client.ApiClient) -> str | None:
    """The host the webhook's ExternalName Service names (None: a ClusterIP Service)."""
    service = client.CoreV1Api(api).read_namespaced_service(SERVICE, SYSTEM)
    name = api.sanitize_for_serialization(service)["spec"].get("externalName")
    return None if name is None else str(name)


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_the_webhook_refuses_while_the_replica_it_was_routed_to_is_hung(
    api: client.ApiClient, namespace: str, two_operators: dict[str, Any]
) -> None:
    assert _refusal(api, namespace)  # both up: the webhook answers
    target = route(api)
    by_ip = {p["status"]["podIP"]: name for name, p in two_operators.items()}
    if target is None:  # a cluster with Services: both replicas are endpoints, stop either
        target = next(iter(by_ip))
    hung = by_ip[target]
    (other,) = set(two_operators) - {hung}
    led = holder(api)[0] == hung
    restarts = two_operators[hung]["status"]["containerStatuses"][0]["restartCount"]
    with stopped(program_pid(two_operators[hung])):
        refusal = wait_for(
            lambda: _refusal(api, namespace),
            timeout=20,
            what=f"SandboxRestriction to refuse while {hung} is stopped",
        )
        assert "SandboxPool" in refusal
        if route(api) is not None:  # a loopback cluster: the route moved to the live replica
            assert route(api) == two_operators[other]["status"]["podIP"]

    def settled() -> bool:
        pods = operator_pods(api)
        if len(pods) != 2 or holder(api)[0] not in pods or hung not in pods:
            return False
        # A stopped leader resumes past its renew deadline: it must stop leading and exit
        # (restarting as a standby), not carry on as a second leader.
        again = pods[hung]["status"]["containerStatuses"][0]["restartCount"]
        return not led or (again > restarts and holder(api)[0] != hung)

    wait_for(settled, timeout=120, what="both replicas Ready again, the resumed one not leading")


def test_a_leader_frozen_past_its_deadline_stops_leading_when_it_resumes(
    api: client.ApiClient, two_operators: dict[str, Any]
) -> None:
    """A hung leader (SIGSTOP) loses the Lease to the standby; resumed, it finds its renew
    deadline passed and exits (its container restarts as a standby) instead of leading on."""
    leader, _ = holder(api)
    (standby,) = set(two_operators) - {leader}
    restarts = two_operators[leader]["status"]["containerStatuses"][0]["restartCount"]
    with stopped(program_pid(two_operators[leader])):
        wait_for(
            lambda: holder(api)[0] == standby,
            timeout=LEASE_DURATION + 10,  # + the webhook route's move off the stopped replica
            interval=0.2,
            what=f"the standby {standby} to take the Lease from the stopped {leader}",
        )

    def exited() -> bool:
        pods = operator_pods(api)
        again = (
            pods[leader]["status"]["containerStatuses"][0]["restartCount"] if leader in pods else -1
        )
        return len(pods) == 2 and again > restarts

    wait_for(exited, timeout=120, what=f"{leader} to exit on resuming and come back")
    assert holder(api)[0] == standby

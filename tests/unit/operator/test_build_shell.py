"""In-cluster builds through the shells: the deployment controller with its BuildController,
driven on the in-memory FakeKube as the manager drives them (one reconcile per event)."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from crds import constants as c
from nest_operator import build_logic as b
from nest_operator.build_controller import BuildController, status_build_body
from nest_operator.deployment_controller import DeploymentController
from nest_operator.kube import Kube
from nest_operator.manager import ControllerManager
from nest_operator.store import Kind, Obj, Store
from tests.unit.operator.fake_kube import FakeKube, api_error

NS = "team"
KEY = f"{NS}/fn"
REGISTRY = "127.0.0.1:5000/nest/team"
CONTEXT = f"{REGISTRY}@sha256:{'a' * 64}"
CONTEXT2 = f"{REGISTRY}@sha256:{'b' * 64}"
REF = f"{REGISTRY}@sha256:{'c' * 64}"
REF2 = f"{REGISTRY}@sha256:{'d' * 64}"


class BuildKube(FakeKube):
    """FakeKube plus the build pods' reads, counted, with what each Job's pod reported."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.results: dict[str, tuple[int, str]] = {}  # job uid -> (exit code, message)
        self.pod_reads = 0

    async def job_pods(self, namespace: str, job_uid: str) -> list[Obj]:
        self.pod_reads += 1
        if job_uid not in self.results:
            return []
        code, message = self.results[job_uid]
        terminated = {"exitCode": code, "message": message}
        status = {"containerStatuses": [{"name": b.CONTAINER, "state": {"terminated": terminated}}]}
        return [{"metadata": {"name": "p", "creationTimestamp": "x"}, "status": status}]


def template(context: str = CONTEXT) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "fn"}},
        "spec": {
            "function": {"handler": "handler:main", "source": {"build": {"context": context}}}
        },
    }


@pytest.fixture
def kube() -> BuildKube:
    return BuildKube(Store())


@pytest.fixture
def controller(kube: BuildKube) -> DeploymentController:
    builds = BuildController(kube.store, cast(Kube, kube), b.BuildSettings("pool:1", 300))
    return DeploymentController(kube.store, cast(Kube, kube), clock=lambda: 1000.0, builds=builds)


def add_deployment(kube: BuildKube) -> Obj:
    body = {
        "apiVersion": c.API_VERSION,
        "kind": c.DEPLOYMENT_KIND,
        "metadata": {"name": "fn"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "fn"}},
                 "template": template()},
    }  # fmt: skip
    d = kube.stored(Kind.DEPLOYMENT, NS, body)
    kube.store.apply(Kind.DEPLOYMENT, "ADDED", d)
    return d


def deployment(kube: BuildKube) -> Obj:
    d = kube.store.get(Kind.DEPLOYMENT, KEY)
    assert d is not None
    return d


def conditions(kube: BuildKube) -> dict[str, tuple[str, str, str]]:
    status = deployment(kube).get("status") or {}
    return {
        cond["type"]: (cond["status"], cond.get("reason", ""), cond.get("message", ""))
        for cond in status.get("conditions") or []
    }


def finish(kube: BuildKube, name: str, ok: bool, message: str) -> None:
    """The Job controller's verdict and the pod's termination message, as the watch shows."""
    job = kube.store.get(Kind.JOB, f"{NS}/{name}")
    assert job is not None
    kind = "Complete" if ok else "Failed"
    ended = {**job, "status": {"conditions": [{"type": kind, "status": "True"}]}}
    ended["metadata"] = dict(job["metadata"])
    kube.store.apply(Kind.JOB, "MODIFIED", kube._bump(ended))
    kube.results[job["metadata"]["uid"]] = (0 if ok else 1, message)


def events(kube: BuildKube) -> list[tuple[str, str]]:
    return [(e.type, e.reason) for e in kube.events]


def replica_sets(kube: BuildKube) -> list[Obj]:
    return kube.store.all(Kind.REPLICASET)


async def test_a_build_runs_then_rolls_out_the_built_package(
    kube: BuildKube, controller: DeploymentController
) -> None:
    add_deployment(kube)
    await controller.reconcile(KEY)
    [job] = kube.store.all(Kind.JOB)
    name = job["metadata"]["name"]
    assert name == b.job_name("fn", CONTEXT) and job["spec"]["activeDeadlineSeconds"] == 300
    assert replica_sets(kube) == []
    assert conditions(kube)[b.BUILT][:2] == ("Unknown", b.BUILDING)
    assert conditions(kube)["Progressing"][:2] == ("True", b.BUILDING)
    assert deployment(kube)["status"]["build"] == {"context": CONTEXT, "job": name}
    assert events(kube) == [("Normal", b.BUILD_STARTED)]
    for _ in range(3):  # more events while it runs: nothing new
        await controller.reconcile(KEY)
    assert len(kube.store.all(Kind.JOB)) == 1 and kube.pod_reads == 0 and len(kube.events) == 1

    finish(kube, name, True, json.dumps({"ref": REF, "natives": []}))
    await controller.reconcile(KEY)
    assert kube.pod_reads == 1
    built = deployment(kube)["status"]["build"]
    assert (built["ref"], built["job"]) == (REF, name)
    assert conditions(kube)[b.BUILT] == ("True", b.SUCCEEDED, f"built {REF}")
    [rs] = replica_sets(kube)
    assert rs["spec"]["template"]["spec"]["function"]["source"] == {"oci": {"ref": REF}}
    assert rs["spec"]["replicas"] == 2
    assert events(kube)[-2:] == [("Normal", b.BUILD_SUCCEEDED), ("Normal", "ScalingReplicaSet")]
    count = len(kube.events)
    for _ in range(3):
        await controller.reconcile(KEY)
    assert (kube.pod_reads, len(kube.events), len(replica_sets(kube))) == (1, count, 1)


async def test_a_failed_build_says_why_and_creates_no_replica_set(
    kube: BuildKube, controller: DeploymentController
) -> None:
    add_deployment(kube)
    await controller.reconcile(KEY)
    name = b.job_name("fn", CONTEXT)
    why = "no distribution of nest-no-such-package-xyz==1.0 found"
    finish(kube, name, False, why)
    await controller.reconcile(KEY)
    await controller.reconcile(KEY)
    assert replica_sets(kube) == [] and kube.pod_reads == 1
    assert conditions(kube)[b.BUILT] == ("False", b.BUILD_FAILED, why)
    assert conditions(kube)["Progressing"] == ("False", b.BUILD_FAILED, why)
    assert deployment(kube)["status"]["build"]["message"] == why
    assert events(kube) == [("Normal", b.BUILD_STARTED), ("Warning", b.BUILD_FAILED)]
    assert kube.events[-1].message == why

    # Deleting the failed Job retries the build; its message goes from the status.
    [job] = kube.store.all(Kind.JOB)
    await kube.delete(Kind.JOB, job)
    await controller.reconcile(KEY)
    assert len(kube.store.all(Kind.JOB)) == 1
    assert deployment(kube)["status"]["build"] == {"context": CONTEXT, "job": name}
    assert conditions(kube)[b.BUILT][0] == "Unknown"


async def test_a_new_context_rolls_out_only_after_its_build(
    kube: BuildKube, controller: DeploymentController
) -> None:
    add_deployment(kube)
    await controller.reconcile(KEY)
    first = b.job_name("fn", CONTEXT)
    finish(kube, first, True, json.dumps({"ref": REF}))
    await controller.reconcile(KEY)
    [old] = replica_sets(kube)

    await kube.patch(Kind.DEPLOYMENT, NS, "fn", {"spec": {"template": template(CONTEXT2)}})
    await controller.reconcile(KEY)
    second = b.job_name("fn", CONTEXT2)
    assert [j["metadata"]["name"] for j in kube.store.all(Kind.JOB)] == [second]
    assert first in kube.deletes
    assert [rs["metadata"]["name"] for rs in replica_sets(kube)] == [old["metadata"]["name"]]
    assert deployment(kube)["status"]["updatedReplicas"] == 0
    assert conditions(kube)["Progressing"][:2] == ("True", b.BUILDING)
    assert "ref" not in deployment(kube)["status"]["build"]  # null fields dropped by the patch

    finish(kube, second, True, json.dumps({"ref": REF2, "natives": ["numpy==1.26.4"]}))
    await controller.reconcile(KEY)
    new = next(rs for rs in replica_sets(kube) if rs["metadata"]["name"] != old["metadata"]["name"])
    tmpl = new["spec"]["template"]
    assert tmpl["spec"]["function"]["source"] == {"oci": {"ref": REF2}}
    assert tmpl["metadata"]["annotations"][c.NATIVE_DISTRIBUTIONS_ANNOTATION] == '["numpy==1.26.4"]'


async def test_a_refused_job_is_shown_and_retried(
    kube: BuildKube, controller: DeploymentController
) -> None:
    def quota(kind: Kind, body: Obj) -> None:
        if kind == Kind.JOB:
            raise api_error(403, "exceeded quota: jobs")

    kube.on_create = quota
    add_deployment(kube)
    with pytest.raises(Exception, match="Forbidden"):
        await controller.reconcile(KEY)
    assert events(kube) == [("Warning", b.BUILD_FAILED)]
    assert "exceeded quota" in kube.events[0].message
    kube.on_create = None
    await controller.reconcile(KEY)
    assert len(kube.store.all(Kind.JOB)) == 1


async def test_a_template_without_build_shows_no_build(
    kube: BuildKube, controller: DeploymentController
) -> None:
    add_deployment(kube)
    await controller.reconcile(KEY)
    inline = {"spec": {"function": {"source": {"build": None, "inline": {"handler.py": ""}}}}}
    await kube.patch(Kind.DEPLOYMENT, NS, "fn", {"spec": {"template": inline}})
    await controller.reconcile(KEY)
    assert "build" not in deployment(kube)["status"]
    assert b.BUILT not in conditions(kube)
    assert kube.store.all(Kind.JOB) == [] and len(replica_sets(kube)) == 1


def test_status_build_is_patched_whole() -> None:
    assert status_build_body({"context": CONTEXT, "job": "j"}) == {
        "context": CONTEXT, "ref": None, "natives": None, "job": "j", "message": None,
    }  # fmt: skip
    assert status_build_body(None) is None


def test_the_manager_routes_a_build_job_to_its_deployment() -> None:
    manager = ControllerManager.__new__(ControllerManager)
    store = Store()
    manager.store = store
    queued: list[str] = []

    class Queue:
        def add(self, key: str) -> None:
            queued.append(key)

    manager.queues = {"deployments": Queue()}  # type: ignore[dict-item]
    d = {"metadata": {"name": "fn", "namespace": NS, "uid": "d-uid", "resourceVersion": "1"}}
    store.apply(Kind.DEPLOYMENT, "ADDED", d)
    owner = [{"uid": "d-uid", "controller": True}]
    job = {"metadata": {"name": "j", "namespace": NS, "uid": "j", "ownerReferences": owner}}
    manager._route(Kind.JOB, job, deleted=False)
    stray = {"metadata": {"name": "k", "namespace": NS, "uid": "k"}}
    manager._route(Kind.JOB, stray, deleted=False)
    assert queued == [KEY]

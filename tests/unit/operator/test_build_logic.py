"""In-cluster builds, the pure rules: the Job, what its end means, the plan and the template."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from crds import constants as c
from crds.workloads import SandboxDeployment
from nest_operator import build_logic as b
from nest_operator.conditions import FALSE, TRUE, UNKNOWN, Condition
from nest_operator.deployment_logic import DeploymentInfo, ReplicaSetInfo, sync

REGISTRY = "127.0.0.1:5000/nest/team"
CONTEXT = f"{REGISTRY}@sha256:{'a' * 64}"
CONTEXT2 = f"{REGISTRY}@sha256:{'b' * 64}"
REF = f"{REGISTRY}@sha256:{'c' * 64}"
SETTINGS = b.BuildSettings(image="pool:1", deadline_seconds=600)


def template(context: str = CONTEXT, secret: str | None = None) -> dict[str, Any]:
    build: dict[str, Any] = {"context": context}
    if secret:
        build["pullSecret"] = secret
    return {
        "metadata": {"labels": {"app": "fn"}},
        "spec": {"function": {"handler": "handler:main", "source": {"build": build}}},
    }


def deployment(tmpl: dict[str, Any] | None = None, build: dict[str, Any] | None = None) -> Any:
    d: dict[str, Any] = {
        "apiVersion": c.API_VERSION,
        "kind": c.DEPLOYMENT_KIND,
        "metadata": {"name": "fn", "namespace": "team", "uid": "d-uid", "generation": 1},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "fn"}},
            "template": tmpl or template(),
        },
        "status": {},
    }
    if build is not None:
        d["status"]["build"] = build
    return d


def job(name: str, finished: str | None = None, reason: str = "") -> dict[str, Any]:
    conditions = [{"type": finished, "status": "True", "reason": reason}] if finished else []
    return {
        "metadata": {"name": name, "namespace": "team", "uid": f"j-{name}"},
        "spec": {"activeDeadlineSeconds": 600},
        "status": {"conditions": conditions},
    }


def pod(message: str | None, exit_code: int = 0) -> dict[str, Any]:
    terminated: dict[str, Any] = {"exitCode": exit_code, "reason": "Error" if exit_code else ""}
    if message is not None:
        terminated["message"] = message
    statuses = [{"name": b.CONTAINER, "state": {"terminated": terminated}}]
    return {"metadata": {"name": "p"}, "status": {"containerStatuses": statuses}}


NAME = b.job_name("fn", CONTEXT)


# -- the Job -------------------------------------------------------------------------------------


def test_the_job_name_keeps_the_digest_and_fits_63() -> None:
    assert NAME == "fn-build-aaaaaaaaaa"
    long = b.job_name("x" * 70 + "-y", CONTEXT2)
    assert len(long) == 63 and long.endswith("-build-bbbbbbbbbb")
    assert b.job_name("a" * 45 + "-" + "b" * 20, CONTEXT).endswith("a-build-aaaaaaaaaa")


def test_the_job_is_the_contracts() -> None:
    body = b.job_body(deployment(), {"context": CONTEXT}, SETTINGS)
    meta, spec = body["metadata"], body["spec"]
    assert (body["apiVersion"], body["kind"]) == ("batch/v1", "Job")
    assert (meta["name"], meta["namespace"]) == (NAME, "team")
    assert meta["labels"] == {c.BUILD_LABEL: "fn"}
    [owner] = meta["ownerReferences"]
    assert owner["uid"] == "d-uid" and owner["controller"] and owner["kind"] == "SandboxDeployment"
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 600)
    pod_spec = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == {c.BUILD_LABEL: "fn"}
    assert pod_spec["restartPolicy"] == "Never"
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["enableServiceLinks"] is False
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["runAsUser"] == 65532
    [container] = pod_spec["containers"]
    assert container["image"] == "pool:1"
    assert container["command"] == ["nest-build"]
    assert container["args"] == ["--context", CONTEXT, "--tag", "fn"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    limits = {"cpu": "1", "memory": "1Gi"}
    assert container["resources"] == {"requests": limits, "limits": limits}
    assert {"name": "HOME", "value": "/var/lib/nest/tmp"} in container["env"]
    assert {"name": "TMPDIR", "value": "/var/lib/nest/tmp"} in container["env"]
    assert not any(e["name"] == "DOCKER_CONFIG" for e in container["env"])
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/var/lib/nest/tmp"}]
    assert pod_spec["volumes"] == [{"name": "tmp", "emptyDir": {}}]


def test_a_pull_secret_becomes_the_builds_docker_config() -> None:
    body = b.job_body(deployment(), {"context": CONTEXT, "pullSecret": "regcred"}, SETTINGS)
    pod_spec = body["spec"]["template"]["spec"]
    [container] = pod_spec["containers"]
    assert {"name": "DOCKER_CONFIG", "value": b.DOCKER_CONFIG_DIR} in container["env"]
    secret = next(v for v in pod_spec["volumes"] if v["name"] == "registry")["secret"]
    assert secret == {
        "secretName": "regcred",
        "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
    }
    mount = next(m for m in container["volumeMounts"] if m["name"] == "registry")
    assert mount == {"name": "registry", "mountPath": b.DOCKER_CONFIG_DIR, "readOnly": True}


# -- what a Job's end means ----------------------------------------------------------------------


def test_a_running_job_means_nothing_yet() -> None:
    assert b.outcome(job(NAME), None) == b.RUNNING
    assert not b.needs_result(job(NAME), None)


def test_a_succeeded_job_yields_the_ref_and_natives_of_its_result() -> None:
    message = json.dumps({"ref": REF, "natives": ["numpy==1.26.4"]}) + "\n"
    assert b.outcome(job(NAME, "Complete"), pod(message)) == b.Outcome(
        True, REF, ("numpy==1.26.4",)
    )
    assert b.outcome(job(NAME, "Complete"), pod(json.dumps({"ref": REF}))).ref == REF


@pytest.mark.parametrize(
    ("message", "why"),
    [
        ("", "no result"),
        ("built it!", "not JSON"),
        ("[1]", "not a JSON object"),
        (json.dumps({"ref": "nest/team:latest"}), "ref 'nest/team:latest'"),
        (json.dumps({"ref": REF, "natives": "numpy"}), "natives"),
        (json.dumps({"ref": REF, "natives": ["numpy"]}), "natives"),
    ],
)
def test_a_succeeded_job_with_an_unreadable_result_failed(message: str, why: str) -> None:
    result = b.outcome(job(NAME, "Complete"), pod(message))
    assert result.finished and result.ref is None
    assert "result is unreadable" in result.message and why in result.message


def test_a_succeeded_job_whose_pod_is_gone_failed() -> None:
    result = b.outcome(job(NAME, "Complete"), None)
    assert result.ref is None and "pod, with the result, is gone" in result.message


def test_a_failed_job_reports_its_termination_message() -> None:
    message = "no wheel for nest-no-such-package-xyz==1.0 fits cp311-manylinux\nmore"
    result = b.outcome(job(NAME, "Failed", "BackoffLimitExceeded"), pod(message, 1))
    assert result == b.Outcome(True, message=message)


def test_a_failed_job_without_a_message_says_how_it_ended() -> None:
    result = b.outcome(job(NAME, "Failed", "BackoffLimitExceeded"), pod(None, 137))
    assert result.message == "the build failed (Error, exit code 137)"
    gone = b.outcome(job(NAME, "Failed", "BackoffLimitExceeded"), None)
    assert gone.message == "the build failed: BackoffLimitExceeded"


def test_a_job_past_its_deadline_says_so() -> None:
    result = b.outcome(job(NAME, "Failed", "DeadlineExceeded"), None)
    assert result.message.startswith("the build did not finish within 600s")
    with_log = b.outcome(job(NAME, "Failed", "DeadlineExceeded"), pod("collecting numpy", 137))
    assert with_log.message.endswith("\ncollecting numpy")


def test_a_long_message_is_cut_to_the_kubelets_limit() -> None:
    result = b.outcome(job(NAME, "Failed"), pod("x" * 10000, 1))
    assert len(result.message) == b.RESULT_MAX


def test_the_pod_is_read_once_per_ended_job() -> None:
    ended = job(NAME, "Failed")
    assert b.needs_result(ended, None)
    assert b.needs_result(ended, {"context": CONTEXT, "job": NAME})
    assert not b.needs_result(ended, {"context": CONTEXT, "job": NAME, "message": "boom"})
    assert b.needs_result(ended, {"context": CONTEXT2, "job": "other", "ref": REF})


# -- the resolved template -----------------------------------------------------------------------


def test_a_template_is_resolved_only_once_its_context_is_built() -> None:
    tmpl = template()
    assert b.resolve_template(tmpl, None) is None
    assert b.resolve_template(tmpl, {"context": CONTEXT, "job": NAME}) is None
    assert b.resolve_template(tmpl, {"context": CONTEXT2, "ref": REF}) is None
    resolved = b.resolve_template(tmpl, {"context": CONTEXT, "ref": REF})
    assert resolved is not None
    assert resolved["spec"]["function"]["source"] == {"oci": {"ref": REF}}
    assert c.NATIVE_DISTRIBUTIONS_ANNOTATION not in resolved["metadata"]["annotations"]
    assert tmpl == template()  # not changed in place


def test_a_resolved_template_carries_the_pull_secret_and_natives_as_nest_deploy_writes() -> None:
    tmpl = template(secret="regcred")
    tmpl["metadata"]["annotations"] = {c.NATIVE_DISTRIBUTIONS_ANNOTATION: '["stale==0"]', "a": "b"}
    built = {"context": CONTEXT, "ref": REF, "natives": ["Pillow==10.0.0", "numpy==1.26.4"]}
    resolved = b.resolve_template(tmpl, built)
    assert resolved is not None
    assert resolved["spec"]["function"]["source"] == {"oci": {"ref": REF, "pullSecret": "regcred"}}
    annotations = resolved["metadata"]["annotations"]
    assert annotations["a"] == "b"
    assert json.loads(annotations[c.NATIVE_DISTRIBUTIONS_ANNOTATION]) == [
        "numpy==1.26.4",
        "pillow==10.0.0",
    ]
    d = deployment(resolved)
    SandboxDeployment.model_validate(d)  # a valid object, with a valid oci source


def test_a_template_that_builds_nothing_is_its_own_resolution() -> None:
    tmpl = {"spec": {"function": {"handler": "h:m", "source": {"inline": {"h.py": ""}}}}}
    assert b.resolve_template(tmpl, None) == tmpl


# -- the plan ------------------------------------------------------------------------------------


def test_a_new_context_gets_its_job_and_waits() -> None:
    p = b.plan(deployment(), [], SETTINGS)
    assert p.template is None
    assert p.create is not None and p.create["metadata"]["name"] == NAME
    assert p.status == {"context": CONTEXT, "job": NAME}
    assert p.condition is not None
    assert (p.condition.status, p.condition.reason) == (UNKNOWN, b.BUILDING)
    assert [(e.type, e.reason) for e in p.events] == [("Normal", b.BUILD_STARTED)]


def test_a_running_job_is_waited_for_without_events() -> None:
    p = b.plan(deployment(build={"context": CONTEXT, "job": NAME}), [job(NAME)], SETTINGS)
    assert (p.template, p.create, p.events) == (None, None, ())
    assert p.condition is not None and p.condition.reason == b.BUILDING


def test_a_succeeded_build_resolves_the_template_once_with_one_event() -> None:
    d = deployment(build={"context": CONTEXT, "job": NAME})
    result = b.Outcome(True, REF, ("numpy==1.26.4",))
    p = b.plan(d, [job(NAME, "Complete")], SETTINGS, result)
    assert p.status == {"context": CONTEXT, "job": NAME, "ref": REF, "natives": ["numpy==1.26.4"]}
    assert p.condition == Condition(b.BUILT, TRUE, b.SUCCEEDED, f"built {REF}")
    assert p.template is not None
    assert p.template["spec"]["function"]["source"] == {"oci": {"ref": REF}}
    assert [(e.type, e.reason) for e in p.events] == [("Normal", b.BUILD_SUCCEEDED)]
    assert REF in p.events[0].message
    # Once recorded, the status alone resolves it: no pod read, no event, no Job needed.
    again = b.plan(deployment(build=p.status), [], SETTINGS)
    assert again.template == p.template and again.events == () and again.create is None


def test_a_failed_build_holds_the_rollout_with_its_message() -> None:
    d = deployment(build={"context": CONTEXT, "job": NAME})
    result = b.Outcome(True, message="no wheel for nest-no-such-package-xyz==1.0")
    p = b.plan(d, [job(NAME, "Failed")], SETTINGS, result)
    assert p.template is None and p.create is None
    assert p.status == {"context": CONTEXT, "job": NAME, "message": result.message}
    assert p.condition == Condition(b.BUILT, FALSE, b.BUILD_FAILED, result.message)
    assert [(e.type, e.reason, e.message) for e in p.events] == [
        ("Warning", b.BUILD_FAILED, result.message)
    ]
    recorded = b.plan(deployment(build=p.status), [job(NAME, "Failed")], SETTINGS)
    assert recorded.condition == p.condition and recorded.events == ()
    assert recorded.create is None  # the failed Job stays, for its log


def test_deleting_a_failed_builds_job_retries_it() -> None:
    failed = {"context": CONTEXT, "job": NAME, "message": "registry down"}
    p = b.plan(deployment(build=failed), [], SETTINGS)
    assert p.create is not None and p.status == {"context": CONTEXT, "job": NAME}
    assert p.condition is not None and p.condition.status == UNKNOWN


def test_a_new_context_supersedes_the_old_jobs_and_keeps_the_current() -> None:
    old = b.job_name("fn", CONTEXT)
    d = deployment(template(CONTEXT2), build={"context": CONTEXT, "job": old, "ref": REF})
    p = b.plan(d, [job(old, "Complete")], SETTINGS)
    new = b.job_name("fn", CONTEXT2)
    assert p.create is not None and p.create["metadata"]["name"] == new
    assert p.delete == (old,)
    assert p.template is None  # the old ref does not serve the new context
    kept = b.plan(deployment(template(CONTEXT2)), [job(old), job(new)], SETTINGS)
    assert kept.delete == (old,) and kept.create is None


def test_a_template_that_stops_building_drops_its_jobs_and_status() -> None:
    tmpl = {"spec": {"function": {"handler": "h:m", "source": {"path": "/srv"}}}}
    p = b.plan(deployment(tmpl, build={"context": CONTEXT, "ref": REF}), [job(NAME)], SETTINGS)
    assert p.template == tmpl and p.delete == (NAME,)
    assert p.status is None and p.condition is None and p.create is None


# -- the rollout while not built -----------------------------------------------------------------


def rs(name: str, revision: int, tmpl: dict[str, Any], replicas: int = 2) -> ReplicaSetInfo:
    return ReplicaSetInfo(name, revision, replicas, tmpl, float(revision), replicas, replicas,
                          replicas)  # fmt: skip


def info(tmpl: dict[str, Any]) -> DeploymentInfo:
    return DeploymentInfo(name="fn", generation=2, replicas=2, template=tmpl)


def test_while_building_the_newest_replica_set_keeps_serving() -> None:
    served = b.resolve_template(template(), {"context": CONTEXT, "ref": REF})
    assert served is not None
    sets = [rs("fn-old", 1, {"spec": {}}, 0), rs("fn-cur", 2, served)]
    aim = b.held_template(sets)
    assert aim == served
    planned = sync(info(dict(aim)), sets, 100.0)
    held = b.building_plan(planned, b._building(CONTEXT2, "j"), 100.0)
    assert held.create is None and held.scale == ()
    assert held.status.updated_replicas == 0 and held.status.available_replicas == 2
    progressing = next(c for c in held.status.conditions if c.type == "Progressing")
    assert (progressing.status, progressing.reason) == (TRUE, b.BUILDING)


def test_a_first_build_creates_no_replica_set_and_a_failed_one_stops_progress() -> None:
    assert b.held_template([]) is None
    planned = sync(info(template()), [], 100.0)
    assert planned.create is not None  # what sync alone would do
    failed = Condition(b.BUILT, FALSE, b.BUILD_FAILED, "no wheel")
    held = b.building_plan(planned, failed, 100.0)
    assert held.create is None and held.scale == () and held.revisions == ()
    progressing = next(c for c in held.status.conditions if c.type == "Progressing")
    assert (progressing.status, progressing.reason, progressing.message) == (
        FALSE,
        b.BUILD_FAILED,
        "no wheel",
    )
    available = next(c for c in held.status.conditions if c.type == "Available")
    assert available.status == FALSE


def test_built_is_set_and_removed_with_the_build() -> None:
    built = Condition(b.BUILT, TRUE, b.SUCCEEDED, "built")
    conditions = b.with_built((), built, 5.0)
    assert [(x.type, x.last_transition_time) for x in conditions] == [(b.BUILT, 5.0)]
    assert b.with_built(conditions, copy.copy(built), 9.0)[0].last_transition_time == 5.0
    assert b.with_built(conditions, None, 9.0) == ()

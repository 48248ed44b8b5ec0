"""SandboxRestriction's rules, one by one: what each allows, what it denies, and the field named."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest

from crds import constants as c
from nest_operator import admission as adm

SIDECAR = "system:serviceaccount:nest-system:nest-sidecar"
OPERATOR = "system:serviceaccount:nest-system:nest-operator"
CONFIG = adm.Config()
POD = adm.PodClaim(namespace="nest-system", name="pool-a", uid="uid-a")


def sidecar(pod: adm.PodClaim | None = POD) -> adm.User:
    extra = {} if pod is None else {adm.POD_NAME_EXTRA: (pod.name,), adm.POD_UID_EXTRA: (pod.uid,)}
    return adm.User(SIDECAR, groups=("system:serviceaccounts",), extra=extra)


ALICE = adm.User("alice", groups=("system:authenticated",))
ADMIN = adm.User("nest-admin", groups=("system:masters", "system:authenticated"))
SCHEDULER = adm.User(OPERATOR, groups=("system:serviceaccounts",))


def sandbox(
    *, pod: str | None = "pool-a", uid: str | None = "uid-a", pool: str | None = None, **status: Any
) -> dict[str, Any]:
    labels = {"app": "hello"}
    spec: dict[str, Any] = {"function": {"handler": "main:handler"}}
    if uid is not None:
        labels |= {c.POD_UID_LABEL: uid, c.POOL_LABEL: "default"}
    if pod is not None:
        spec |= {"podName": pod, "podNamespace": "nest-system"}
    if pool is not None:
        spec["pool"] = pool
    return {
        "apiVersion": c.API_VERSION,
        "kind": "Sandbox",
        "metadata": {
            "name": "s1",
            "namespace": "team",
            "labels": labels,
            "finalizers": [c.SIDECAR_FINALIZER],
        },
        "spec": spec,
        "status": dict(status),
    }


def request(
    user: adm.User,
    operation: str,
    obj: Mapping[str, Any] | None,
    old: Mapping[str, Any] | None = None,
    *,
    resource: str = "sandboxes",
    subresource: str = "",
    group: str = c.GROUP,
    namespace: str = "team",
    name: str = "s1",
) -> adm.Request:
    return adm.Request(
        operation=operation,
        group=group,
        resource=resource,
        subresource=subresource,
        namespace=namespace,
        name=name,
        user=user,
        obj=obj,
        old=old,
    )


def verdict(req: adm.Request, answers: adm.Answers | None = None) -> adm.Verdict:
    return adm.decide(req, CONFIG, answers or adm.Answers())


def denied(req: adm.Request, answers: adm.Answers | None = None) -> str:
    result = verdict(req, answers)
    assert not result.allowed, "expected a denial"
    return result.message


# -- identities ----------------------------------------------------------------------------------


def test_the_pod_claim_comes_from_the_token_and_the_accounts_namespace() -> None:
    assert adm.pod_claim(sidecar()) == POD
    assert adm.pod_claim(sidecar(None)) is None
    two = adm.User(SIDECAR, extra={adm.POD_NAME_EXTRA: ("a", "b"), adm.POD_UID_EXTRA: ("u",)})
    assert adm.pod_claim(two) is None


def test_config_from_env_names_accounts_as_namespace_slash_name() -> None:
    env = {
        "NEST_SIDECAR_SERVICE_ACCOUNTS": "pools/side, other/x",
        "NEST_OPERATOR_SERVICE_ACCOUNTS": "ops:op",
    }
    config = adm.Config.from_env(env)
    assert config.sidecar_users == {
        "system:serviceaccount:pools:side",
        "system:serviceaccount:other:x",
    }
    assert config.binder_users == {"system:serviceaccount:ops:op"}
    assert adm.Config.from_env({}) == adm.Config()


# -- sidecars ------------------------------------------------------------------------------------


def test_a_sidecar_may_write_the_status_of_its_own_pods_sandbox() -> None:
    old = sandbox(phase="Starting")
    new = sandbox(phase="Running", podIP="127.0.0.4", port=9000)
    req = request(sidecar(), "UPDATE", new, old, subresource="status")
    assert adm.questions(req, CONFIG) == adm.Questions(pod=POD)
    assert verdict(req, adm.Answers(pod_ip="127.0.0.4")).allowed


def test_a_sidecar_may_not_write_the_status_of_another_pods_sandbox() -> None:
    other = sandbox(pod="pool-b", uid="uid-b")
    req = request(
        sidecar(), "UPDATE", {**other, "status": {"phase": "Failed"}}, other, subresource="status"
    )
    message = denied(req)
    assert message.startswith(f"metadata.labels[{c.POD_UID_LABEL}]: ")
    assert '"nest-system/pool-a"' in message


@pytest.mark.parametrize(
    ("changes", "where"),
    [({"pod": "pool-b"}, "spec.podName"), ({"uid": None, "pod": None}, "metadata.labels")],
)
def test_a_sidecar_is_refused_when_name_or_uid_do_not_both_match(
    changes: dict[str, Any], where: str
) -> None:
    obj = sandbox(**changes)
    message = denied(request(sidecar(), "UPDATE", obj, obj, subresource="status"))
    assert message.startswith(where)


def test_a_sidecar_may_report_only_its_own_pods_ip() -> None:
    old = sandbox()
    hijack = sandbox(podIP="127.0.0.99", port=9000)
    req = request(sidecar(), "UPDATE", hijack, old, subresource="status")
    message = denied(req, adm.Answers(pod_ip="127.0.0.4"))
    assert message.startswith("status.podIP: must be the IP of pod")
    assert "127.0.0.4" in message and "127.0.0.99" in message
    gone = denied(req, adm.Answers(pod_ip=None))
    assert gone.startswith("status.podIP: ")


def test_a_status_without_an_address_needs_no_pod_lookup() -> None:
    req = request(sidecar(), "UPDATE", sandbox(phase="Failed"), sandbox(), subresource="status")
    assert adm.questions(req, CONFIG) == adm.Questions()
    assert verdict(req).allowed


@pytest.mark.parametrize("change", ["add", "remove"])
def test_a_sidecar_may_add_or_remove_its_finalizer_on_its_own_sandbox(change: str) -> None:
    with_it = sandbox()
    without = copy.deepcopy(with_it)
    without["metadata"]["finalizers"] = ["other.example/keep"]
    with_it["metadata"]["finalizers"] = ["other.example/keep", c.SIDECAR_FINALIZER]
    old, new = (without, with_it) if change == "add" else (with_it, without)
    assert verdict(request(sidecar(), "UPDATE", new, old)).allowed


@pytest.mark.parametrize(
    ("path", "edit"),
    [
        ("spec", lambda o: o["spec"]["function"].update(handler="evil:handler")),
        ("metadata.labels", lambda o: o["metadata"]["labels"].update(app="other")),
        ("metadata.finalizers", lambda o: o["metadata"]["finalizers"].append("x.example/y")),
        ("metadata.annotations", lambda o: o["metadata"].update(annotations={"a": "b"})),
    ],
)
def test_a_sidecar_may_change_nothing_else_on_the_main_resource(path: str, edit: Any) -> None:
    old = sandbox()
    new = copy.deepcopy(old)
    edit(new)
    message = denied(request(sidecar(), "UPDATE", new, old))
    assert message.startswith(f"{path}: a sidecar may change only the {c.SIDECAR_FINALIZER}")


def test_a_sidecar_may_not_touch_the_finalizer_of_another_pods_sandbox() -> None:
    old = sandbox(pod="pool-b", uid="uid-b")
    new = copy.deepcopy(old)
    new["metadata"]["finalizers"] = []
    assert denied(request(sidecar(), "UPDATE", new, old)).startswith("metadata.labels[")


@pytest.mark.parametrize("operation", ["CREATE", "DELETE"])
def test_a_sidecar_never_creates_or_deletes_sandboxes(operation: str) -> None:
    obj = sandbox()
    req = request(sidecar(), operation, obj if operation == "CREATE" else None, obj)
    assert denied(req) == f"sandboxes: a sidecar may not {operation.lower()} Sandboxes"


def test_a_sidecar_may_not_write_workloads() -> None:
    req = request(sidecar(), "CREATE", {"spec": {}}, resource=c.DEPLOYMENT_PLURAL)
    assert denied(req).startswith(f"{c.DEPLOYMENT_PLURAL}: a sidecar may not write")


def test_a_legacy_sidecar_token_is_denied_everything() -> None:
    legacy = sidecar(None)
    for req in (
        request(legacy, "UPDATE", sandbox(), sandbox(), subresource="status"),
        request(legacy, "UPDATE", sandbox(), sandbox()),
        lease(legacy, "UPDATE", "pool-a"),
    ):
        assert denied(req).startswith(f"userInfo.extra[{adm.POD_UID_EXTRA}]: ")


def lease(user: adm.User, operation: str, name: str, namespace: str = "nest-system") -> adm.Request:
    obj = {"metadata": {"name": name, "namespace": namespace}, "spec": {}}
    return request(
        user,
        operation,
        obj,
        obj if operation != "CREATE" else None,
        group=adm.COORDINATION,
        resource=adm.LEASES,
        namespace=namespace,
        name=name,
    )


def test_a_sidecar_writes_only_its_own_pods_lease() -> None:
    assert verdict(lease(sidecar(), "CREATE", "pool-a")).allowed
    assert verdict(lease(sidecar(), "UPDATE", "pool-a")).allowed
    assert denied(lease(sidecar(), "UPDATE", "pool-b")).startswith("metadata.name: ")
    assert denied(lease(sidecar(), "CREATE", "nest-operator")).startswith("metadata.name: ")
    other_ns = denied(lease(sidecar(), "UPDATE", "pool-a", namespace="kube-system"))
    assert other_ns.startswith("metadata.namespace: ")
    assert denied(lease(sidecar(), "DELETE", "pool-a")).startswith("leases: ")


def test_no_sidecar_writes_the_operators_election_lease_even_from_a_pod_named_so() -> None:
    named_so = sidecar(adm.PodClaim("nest-system", c.ELECTION_LEASE, "uid-x"))
    message = denied(lease(named_so, "UPDATE", c.ELECTION_LEASE))
    assert message.startswith("metadata.name: ") and "elects the operator's leader" in message


def test_leases_of_everybody_else_pass() -> None:
    assert verdict(lease(ALICE, "UPDATE", "anything")).allowed


# -- binding -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "spec.podName",
        "spec.podNamespace",
        f"metadata.labels[{c.POD_UID_LABEL}]",
        f"metadata.labels[{c.POOL_LABEL}]",
    ],
)
def test_a_user_may_not_create_a_bound_sandbox_naming_each_field(field: str) -> None:
    obj = sandbox(pod=None, uid=None)
    if field.startswith("spec."):
        obj["spec"][field.removeprefix("spec.")] = "x"
    else:
        obj["metadata"]["labels"][field.split("[")[1].rstrip("]")] = "x"
    req = request(ALICE, "CREATE", obj)
    assert adm.questions(req, CONFIG).binder
    assert denied(req) == f"{field}: only the scheduler may bind a Sandbox"


def test_a_user_with_the_binding_right_may_bind() -> None:
    req = request(ALICE, "CREATE", sandbox())
    assert verdict(req, adm.Answers(binder=True)).allowed
    message = denied(req, adm.Answers(binder=False))
    assert message.count("only the scheduler may bind") == 4


@pytest.mark.parametrize("user", [SCHEDULER, ADMIN])
def test_the_operator_and_cluster_admins_bind_without_a_review(user: adm.User) -> None:
    req = request(user, "UPDATE", sandbox(), sandbox(pod=None, uid=None))
    assert not adm.questions(req, CONFIG).binder
    assert verdict(req).allowed


@pytest.mark.parametrize("user", [SCHEDULER, ADMIN])
def test_a_binding_without_the_sidecar_finalizer_is_refused_for_every_binder(
    user: adm.User,
) -> None:
    bare = sandbox()
    bare["metadata"]["finalizers"] = ["other.example/keep"]
    unbound = sandbox(pod=None, uid=None)
    want = f"metadata.finalizers: a binding must carry the {c.SIDECAR_FINALIZER} finalizer"
    assert denied(request(user, "UPDATE", bare, unbound)) == want
    assert denied(request(user, "CREATE", bare)).startswith("metadata.finalizers: ")
    assert verdict(request(user, "UPDATE", sandbox(), unbound)).allowed
    # Not a binding write (the sidecar or the lifecycle controller released it): allowed.
    released = copy.deepcopy(bare)
    released["metadata"]["labels"]["app"] = "v2"
    assert verdict(request(user, "UPDATE", released, bare)).allowed
    assert verdict(request(user, "CREATE", sandbox(pod=None, uid=None))).allowed


def test_a_user_may_not_rebind_or_unbind_but_may_edit_other_fields() -> None:
    bound = sandbox()
    moved = sandbox(pod="pool-b")
    assert denied(request(ALICE, "UPDATE", moved, bound)).startswith("spec.podName: ")
    unbound = sandbox(pod=None)
    assert denied(request(ALICE, "UPDATE", unbound, bound)).startswith("spec.podName: ")
    relabelled = copy.deepcopy(bound)
    relabelled["metadata"]["labels"]["app"] = "v2"
    req = request(ALICE, "UPDATE", relabelled, bound)
    assert adm.questions(req, CONFIG) == adm.Questions()
    assert verdict(req).allowed


def test_unbound_sandboxes_deletes_and_status_writes_by_users_pass() -> None:
    assert verdict(request(ALICE, "CREATE", sandbox(pod=None, uid=None))).allowed
    assert verdict(request(ALICE, "DELETE", None, sandbox())).allowed
    status = request(ALICE, "UPDATE", sandbox(podIP="127.9.9.9"), sandbox(), subresource="status")
    assert verdict(status).allowed


def workload(kind: str, **template_spec: Any) -> dict[str, Any]:
    labels = template_spec.pop("labels", {"app": "hello"})
    return {
        "kind": kind,
        "metadata": {"name": "w"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "hello"}},
            "template": {"metadata": {"labels": labels}, "spec": {"function": {}, **template_spec}},
        },
    }


@pytest.mark.parametrize("resource", sorted(adm.TEMPLATED))
@pytest.mark.parametrize(
    ("template", "field"),
    [
        ({"podName": "p"}, "spec.template.spec.podName"),
        ({"podNamespace": "n"}, "spec.template.spec.podNamespace"),
        (
            {"labels": {"app": "hello", c.POD_UID_LABEL: "u"}},
            f"spec.template.metadata.labels[{c.POD_UID_LABEL}]",
        ),
        (
            {"labels": {"app": "hello", c.POOL_LABEL: "default"}},
            f"spec.template.metadata.labels[{c.POOL_LABEL}]",
        ),
    ],
)
@pytest.mark.parametrize("user", [ALICE, ADMIN, SCHEDULER])
def test_no_template_binds_whoever_writes_it(
    resource: str, template: dict[str, Any], field: str, user: adm.User
) -> None:
    req = request(user, "CREATE", workload(resource, **template), resource=resource, name="w")
    assert denied(req) == f"{field}: {adm.TEMPLATE_BINDS}"


def test_a_template_admitted_before_can_still_be_updated_but_not_newly_bound() -> None:
    legacy = workload(c.REPLICASET_PLURAL, podName="p")
    scaled = copy.deepcopy(legacy)
    scaled["spec"]["replicas"] = 3
    req = request(SCHEDULER, "UPDATE", scaled, legacy, resource=c.REPLICASET_PLURAL)
    assert verdict(req).allowed
    clean = workload(c.REPLICASET_PLURAL)
    req = request(ALICE, "UPDATE", legacy, clean, resource=c.REPLICASET_PLURAL)
    assert denied(req).startswith("spec.template.spec.podName: ")


# -- tenancy -------------------------------------------------------------------------------------


class Selects:
    """A pool admitting namespaces whose labels include `wanted`."""

    def __init__(self, **wanted: str) -> None:
        self.wanted = wanted

    def admits(self, namespace_labels: Mapping[str, str]) -> bool:
        return all(namespace_labels.get(k) == v for k, v in self.wanted.items())


def test_a_create_asks_about_its_pool_with_the_default_when_unset() -> None:
    req = request(ALICE, "CREATE", sandbox(pod=None, uid=None))
    assert adm.questions(req, CONFIG).pool == adm.PoolUse("spec.pool", "default", "team")
    rs = request(
        ALICE, "CREATE", workload(c.DEPLOYMENT_PLURAL, pool="gpu"), resource=c.DEPLOYMENT_PLURAL
    )
    assert adm.questions(rs, CONFIG).pool == adm.PoolUse("spec.template.spec.pool", "gpu", "team")


def test_an_update_asks_only_when_the_pool_changes() -> None:
    old = sandbox(pod=None, uid=None, pool="a")
    same = copy.deepcopy(old)
    same["spec"]["function"]["handler"] = "main:other"
    assert adm.questions(request(ALICE, "UPDATE", same, old), CONFIG).pool is None
    moved = sandbox(pod=None, uid=None, pool="b")
    assert adm.questions(request(ALICE, "UPDATE", moved, old), CONFIG).pool is not None
    status = request(ALICE, "UPDATE", moved, old, subresource="status")
    assert adm.questions(status, CONFIG).pool is None


def test_a_pool_that_does_not_exist_is_refused_naming_it() -> None:
    req = request(ALICE, "CREATE", sandbox(pod=None, uid=None, pool="gpu"))
    standing = adm.PoolStanding(modeled=True, pool=None)
    assert denied(req, adm.Answers(pool=standing)) == 'spec.pool: SandboxPool "gpu" does not exist'


def test_a_namespace_the_pool_does_not_select_is_refused_naming_both() -> None:
    req = request(
        ALICE,
        "CREATE",
        workload(c.REPLICASET_PLURAL, pool="gpu"),
        resource=c.REPLICASET_PLURAL,
        namespace="x",
    )
    standing = adm.PoolStanding(modeled=True, pool=Selects(team="ml"), namespace_labels={})
    message = denied(req, adm.Answers(pool=standing))
    assert message == 'spec.template.spec.pool: namespace "x" may not use SandboxPool "gpu"'
    welcome = adm.PoolStanding(
        modeled=True, pool=Selects(team="ml"), namespace_labels={"team": "ml"}
    )
    assert verdict(req, adm.Answers(pool=welcome)).allowed


def test_tenancy_passes_until_pools_are_modeled_and_also_binds_the_scheduler() -> None:
    req = request(SCHEDULER, "CREATE", sandbox(pod=None, uid=None, pool="gone"))
    assert verdict(req, adm.Answers(pool=adm.PoolStanding(modeled=False))).allowed
    gone = adm.PoolStanding(modeled=True, pool=None)
    assert denied(req, adm.Answers(pool=gone)).startswith("spec.pool: ")


def test_other_groups_pass_without_questions() -> None:
    req = request(ALICE, "CREATE", {}, group="apps", resource="deployments")
    assert adm.questions(req, CONFIG) == adm.Questions()
    assert verdict(req).allowed
    assert adm.decide(
        request(sidecar(None), "CREATE", {}, group="", resource="pods"), CONFIG, adm.Answers()
    ).allowed

"""SandboxRestriction: Nest's NodeRestriction, as pure decisions over one admission request.

Why it exists: tenants share pool pods, so a sidecar's credential must be worth no more than its
own pod (the kubelet's node credential is worth no more than its node), and binding a Sandbox to
a pod must stay the scheduler's decision, since a binding skips every scheduler check (pool,
capacity, isolation, tenancy). RBAC cannot say "only the Sandboxes whose label equals the
caller's pod UID" or "only these fields", so a validating webhook says it.

The shape is question-then-answer so that everything here is pure and fast to test: `questions`
says which facts a request needs (the bound pod's IP, a SubjectAccessReview, a pool's standing),
the webhook shell (webhook.py) looks them up, and `decide` turns request plus answers into a
`Verdict`. Every denial names the field it is about, `field: why`, as Kubernetes' own field
errors do, so `kubectl` users see what to change.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from crds import constants as c
from crds.workloads import TEMPLATE_BINDS
from nest_operator import admission_specs as specs

Obj = Mapping[str, Any]

# The claims a pod-bound ServiceAccount token carries (Kubernetes puts them in userInfo.extra).
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
# The virtual subresource whose `create` right makes a user a binder, like pods/binding.
BINDING_SUBRESOURCE = "binding"
# The API server's authorizer allows this group everything, so a SubjectAccessReview would too.
MASTERS = "system:masters"
COORDINATION = "coordination.k8s.io"
LEASES = "leases"
SANDBOXES = c.SANDBOX_PLURAL
TEMPLATED = frozenset({c.REPLICASET_PLURAL, c.DEPLOYMENT_PLURAL})

CREATE, UPDATE, DELETE = "CREATE", "UPDATE", "DELETE"
LABEL_FIELDS = {label: f"metadata.labels[{label}]" for label in (c.POD_UID_LABEL, c.POOL_LABEL)}
NOT_BINDER = "only the scheduler may bind a Sandbox"


def service_account_user(namespace_and_name: str) -> str:
    """`ns/name` (or `ns:name`) as the username its tokens authenticate as."""
    namespace, _, name = namespace_and_name.replace(":", "/").partition("/")
    return f"system:serviceaccount:{namespace}:{name}"


def _accounts(value: str) -> frozenset[str]:
    return frozenset(service_account_user(v.strip()) for v in value.split(",") if v.strip())


@dataclass(frozen=True)
class Config:
    """Whose requests are whose: sidecars are restricted, the operator binds."""

    sidecar_users: frozenset[str] = frozenset({service_account_user("nest-system/nest-sidecar")})
    binder_users: frozenset[str] = frozenset({service_account_user("nest-system/nest-operator")})
    default_pool: str = "default"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Config:
        """NEST_SIDECAR_SERVICE_ACCOUNTS / NEST_OPERATOR_SERVICE_ACCOUNTS: `ns/name,...`."""
        base = cls()
        sidecars = env.get("NEST_SIDECAR_SERVICE_ACCOUNTS")
        binders = env.get("NEST_OPERATOR_SERVICE_ACCOUNTS")
        return cls(
            sidecar_users=_accounts(sidecars) if sidecars else base.sidecar_users,
            binder_users=_accounts(binders) if binders else base.binder_users,
        )


@dataclass(frozen=True)
class User:
    """Who sent the request, as the API server authenticated them."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    """The parts of an AdmissionRequest the rules look at."""

    operation: str
    group: str
    resource: str
    namespace: str
    name: str
    user: User
    subresource: str = ""
    obj: Obj | None = None
    old: Obj | None = None


@dataclass(frozen=True)
class PodClaim:
    """The pod a sidecar's token is bound to; its namespace is the ServiceAccount's."""

    namespace: str
    name: str
    uid: str


class Pool(Protocol):
    """What admission needs of a SandboxPool: whether a namespace may use it."""

    def admits(self, namespace_labels: Mapping[str, str]) -> bool: ...


@dataclass(frozen=True)
class PoolUse:
    """A request names a pool: may its namespace use it?"""

    field: str
    pool: str
    namespace: str


@dataclass(frozen=True)
class Questions:
    """The facts `decide` will need for one request; the shell looks them up."""

    pod: PodClaim | None = None  # the bound pod whose IP status.podIP must be
    binder: bool = False  # may the user create sandboxes/binding here (SubjectAccessReview)?
    pool: PoolUse | None = None


@dataclass(frozen=True)
class PoolStanding:
    """A pool as the directory knows it, and the labels of the requesting namespace."""

    modeled: bool  # False until SandboxPools exist in the cluster: nothing to check against
    pool: Pool | None = None
    namespace_labels: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Answers:
    pod_ip: str | None = None  # None: the pod does not exist (any more) or has no IP
    binder: bool = False
    pool: PoolStanding | None = None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    message: str = ""


ALLOW = Verdict(True)


def deny(*problems: tuple[str, str]) -> Verdict:
    """A denial naming each field: `field: why; field: why`."""
    return Verdict(False, "; ".join(f"{where}: {why}" for where, why in problems))


# -- identities ----------------------------------------------------------------------------------


def is_sidecar(user: User, config: Config) -> bool:
    return user.username in config.sidecar_users


def is_privileged_binder(user: User, config: Config) -> bool:
    """Binders known without asking: the operator's account and cluster-admins (system:masters)."""
    return user.username in config.binder_users or MASTERS in user.groups


def pod_claim(user: User) -> PodClaim | None:
    """The pod a sidecar's token names; None for a token bound to no pod (a legacy token)."""
    names, uids = user.extra.get(POD_NAME_EXTRA) or (), user.extra.get(POD_UID_EXTRA) or ()
    parts = user.username.split(":")
    if len(names) != 1 or len(uids) != 1 or len(parts) != 4 or not names[0] or not uids[0]:
        return None
    return PodClaim(namespace=parts[2], name=names[0], uid=uids[0])


# -- reading objects -----------------------------------------------------------------------------


def _meta(obj: Obj | None) -> Obj:
    return (obj or {}).get("metadata") or {}


def _spec(obj: Obj | None) -> Obj:
    return (obj or {}).get("spec") or {}


def _labels(obj: Obj | None) -> Obj:
    return _meta(obj).get("labels") or {}


def binding_fields(obj: Obj | None, prefix: str = "") -> dict[str, Any]:
    """The binding a Sandbox (or a template, under `prefix`) carries, by field path."""
    spec, labels = _spec(obj), _labels(obj)
    fields = {
        f"{prefix}spec.podName": spec.get("podName"),
        f"{prefix}spec.podNamespace": spec.get("podNamespace"),
    }
    fields |= {prefix + path: labels.get(label) for label, path in LABEL_FIELDS.items()}
    return fields


def changed_binding_fields(old: Obj | None, new: Obj | None, prefix: str = "") -> list[str]:
    """Binding fields `new` sets (on create, `old` is None) or changes, removal included."""
    before, after = binding_fields(old, prefix), binding_fields(new, prefix)
    if old is None:
        return [path for path, value in after.items() if value not in (None, "")]
    return [path for path, value in after.items() if before[path] != value]


def _template(obj: Obj | None) -> Obj:
    return _spec(obj).get("template") or {}


def pool_use(request: Request, config: Config) -> PoolUse | None:
    """The pool a create (or a change of pool) names; None when nothing new is asked for."""
    if request.subresource or request.operation not in (CREATE, UPDATE):
        return None
    if request.resource == SANDBOXES:
        where, new, old = "spec.pool", _spec(request.obj), _spec(request.old)
    elif request.resource in TEMPLATED:
        where = "spec.template.spec.pool"
        new, old = _spec(_template(request.obj)), _spec(_template(request.old))
    else:
        return None
    pool = new.get("pool") or config.default_pool
    if request.operation == UPDATE and (old.get("pool") or config.default_pool) == pool:
        return None
    return PoolUse(field=where, pool=pool, namespace=request.namespace)


# -- the rules -----------------------------------------------------------------------------------


def questions(request: Request, config: Config) -> Questions:
    """What `decide` needs to know about `request` beyond the request itself."""
    if request.group not in (c.GROUP, COORDINATION):
        return Questions()
    if is_sidecar(request.user, config):
        claim = pod_claim(request.user)
        status = (request.obj or {}).get("status") or {}
        wants_ip = request.resource == SANDBOXES and request.subresource == "status"
        if claim is not None and wants_ip and status.get("podIP"):
            return Questions(pod=claim)
        return Questions()
    if request.group != c.GROUP:
        return Questions()
    binds = (
        request.resource == SANDBOXES
        and not request.subresource
        and request.operation in (CREATE, UPDATE)
        and bool(changed_binding_fields(request.old, request.obj))
        and not is_privileged_binder(request.user, config)
    )
    return Questions(binder=binds, pool=pool_use(request, config))


def decide(request: Request, config: Config, answers: Answers) -> Verdict:
    """Allow or deny `request`, given the answers to its `questions`."""
    if request.group not in (c.GROUP, COORDINATION):
        return ALLOW
    if is_sidecar(request.user, config):
        return sidecar_verdict(request, answers.pod_ip)
    if request.group != c.GROUP or request.operation == DELETE:
        return ALLOW
    binder = is_privileged_binder(request.user, config) or answers.binder
    for verdict in (
        binding_verdict(request, binder),
        bound_finalizer_verdict(request),
        template_verdict(request),
        spec_verdict(request),
        tenancy_verdict(pool_use(request, config), answers.pool),
    ):
        if not verdict.allowed:
            return verdict
    return ALLOW


def binding_verdict(request: Request, binder: bool) -> Verdict:
    """Only a binder sets or changes a Sandbox's binding, at create and at update."""
    if request.resource != SANDBOXES or request.subresource or binder:
        return ALLOW
    if request.operation not in (CREATE, UPDATE):
        return ALLOW
    changed = changed_binding_fields(request.old, request.obj)
    return deny(*((path, NOT_BINDER) for path in changed)) if changed else ALLOW


def bound_finalizer_verdict(request: Request) -> Verdict:
    """A binding write carries the sidecar's finalizer, whoever the binder is.

    The binder adds it in the binding write (the scheduler does, in one patch); the sidecar only
    releases it, once the sandbox really stopped. Refusing a binding without it keeps that the
    one path: no Sandbox reaches a sidecar whose deletion would not wait for it.
    """
    if request.resource != SANDBOXES or request.subresource:
        return ALLOW
    if request.operation not in (CREATE, UPDATE) or request.obj is None:
        return ALLOW
    spec, labels = _spec(request.obj), _labels(request.obj)
    bound = bool(spec.get("podName") or labels.get(c.POD_UID_LABEL))
    if not bound or not changed_binding_fields(request.old, request.obj):
        return ALLOW
    if c.SIDECAR_FINALIZER in (_meta(request.obj).get("finalizers") or []):
        return ALLOW
    return deny(
        ("metadata.finalizers", f"a binding must carry the {c.SIDECAR_FINALIZER} finalizer")
    )


def template_verdict(request: Request) -> Verdict:
    """No template binds, whoever writes it: it would bind every Sandbox stamped from it.

    On update only what the change introduces is refused, so an object admitted before this
    webhook existed can still be scaled, finalized and deleted.
    """
    if request.resource not in TEMPLATED or request.operation not in (CREATE, UPDATE):
        return ALLOW
    old = _template(request.old) if request.old is not None else None
    new_fields = binding_fields(_template(request.obj), "spec.template.")
    old_fields = binding_fields(old, "spec.template.") if old is not None else {}
    bad = [
        path
        for path, value in new_fields.items()
        if value not in (None, "") and old_fields.get(path) != value
    ]
    return deny(*((path, TEMPLATE_BINDS) for path in bad)) if bad else ALLOW


def spec_verdict(request: Request) -> Verdict:
    """What the schema cannot say about a spec, every problem at once (admission_specs): a
    workload's selector against its template's labels, and the function's inline files, env
    names and quantities."""
    if request.resource not in TEMPLATED | {SANDBOXES} or request.subresource:
        return ALLOW
    if request.operation not in (CREATE, UPDATE) or request.obj is None:
        return ALLOW
    templated = request.resource in TEMPLATED
    problems = specs.selector_problems(request.obj, request.old) if templated else []
    if request.resource == c.DEPLOYMENT_PLURAL:
        problems += specs.function_label_problems(request.obj, request.old)
    prefix = "spec.template.spec.function" if templated else "spec.function"
    new = specs.function_of(request.obj, templated)
    old = specs.function_of(request.old, templated) if request.old is not None else {}
    problems += specs.function_problems(new, old, prefix)
    if request.resource != c.DEPLOYMENT_PLURAL:
        problems += specs.build_source_problems(new, old, prefix)
    return deny(*problems) if problems else ALLOW


def tenancy_verdict(use: PoolUse | None, standing: PoolStanding | None) -> Verdict:
    """A namespace uses only pools whose namespaceSelector selects it."""
    if use is None or standing is None or not standing.modeled:
        return ALLOW
    if standing.pool is None:
        return deny((use.field, f'SandboxPool "{use.pool}" does not exist'))
    labels = standing.namespace_labels
    if labels is None or not standing.pool.admits(labels):
        return deny(
            (use.field, f'namespace "{use.namespace}" may not use SandboxPool "{use.pool}"')
        )
    return ALLOW


# -- sidecars ------------------------------------------------------------------------------------


def _not_bound_to(obj: Obj | None, claim: PodClaim) -> tuple[str, str] | None:
    """The first binding field of `obj` that does not name the claimed pod."""
    spec, labels = _spec(obj), _labels(obj)
    expected = (
        (LABEL_FIELDS[c.POD_UID_LABEL], labels.get(c.POD_UID_LABEL), claim.uid),
        ("spec.podName", spec.get("podName"), claim.name),
        ("spec.podNamespace", spec.get("podNamespace"), claim.namespace),
    )
    for path, value, wanted in expected:
        if value != wanted:
            return path, f"the Sandbox is not bound to this sidecar's pod {_pod(claim)}"
    return None


def _pod(claim: PodClaim) -> str:
    return f'"{claim.namespace}/{claim.name}"'


def sidecar_verdict(request: Request, pod_ip: str | None) -> Verdict:
    """A sidecar writes only its own pod's Sandboxes' status and finalizer, and its Lease."""
    claim = pod_claim(request.user)
    if claim is None:
        return deny(
            (
                f"userInfo.extra[{POD_UID_EXTRA}]",
                "a sidecar must use a token bound to its pod; this token names no pod",
            )
        )
    if request.group == COORDINATION and request.resource == LEASES:
        return lease_verdict(request, claim)
    if request.resource != SANDBOXES:
        return deny((request.resource, f"a sidecar may not write {request.resource}"))
    if request.operation != UPDATE:
        verb = request.operation.lower()
        return deny(("sandboxes", f"a sidecar may not {verb} Sandboxes"))
    for obj in (request.old, request.obj):
        problem = _not_bound_to(obj, claim)
        if problem is not None:
            return deny(problem)
    if request.subresource == "status":
        return status_verdict(request.obj, claim, pod_ip)
    if request.subresource:
        return deny((f"sandboxes/{request.subresource}", "a sidecar may not write it"))
    return finalizer_only_verdict(request.old, request.obj)


def status_verdict(new: Obj | None, claim: PodClaim, pod_ip: str | None) -> Verdict:
    """The address a sidecar reports is its own pod's, so traffic cannot be diverted."""
    reported = ((new or {}).get("status") or {}).get("podIP")
    if not reported:
        return ALLOW
    if pod_ip is None:
        return deny(("status.podIP", f"pod {_pod(claim)} has no IP to report"))
    if reported != pod_ip:
        return deny(
            ("status.podIP", f"must be the IP of pod {_pod(claim)} ({pod_ip}), not {reported}")
        )
    return ALLOW


def _without_sidecar_finalizer(obj: Obj | None) -> list[str]:
    return [f for f in _meta(obj).get("finalizers") or [] if f != c.SIDECAR_FINALIZER]


def finalizer_only_verdict(old: Obj | None, new: Obj | None) -> Verdict:
    """On the main resource a sidecar may add or remove its finalizer, and change nothing else."""
    why = f"a sidecar may change only the {c.SIDECAR_FINALIZER} finalizer of a Sandbox"
    compared = (
        ("spec", _spec(old), _spec(new)),
        ("metadata.labels", _labels(old), _labels(new)),
        (
            "metadata.annotations",
            _meta(old).get("annotations") or {},
            _meta(new).get("annotations") or {},
        ),
        (
            "metadata.ownerReferences",
            _meta(old).get("ownerReferences") or [],
            _meta(new).get("ownerReferences") or [],
        ),
        ("metadata.finalizers", _without_sidecar_finalizer(old), _without_sidecar_finalizer(new)),
        ("status", (old or {}).get("status") or {}, (new or {}).get("status") or {}),
    )
    for path, before, after in compared:
        if before != after:
            return deny((path, why))
    return ALLOW


def lease_verdict(request: Request, claim: PodClaim) -> Verdict:
    """A sidecar keeps one Lease: named after its pod, in its pod's namespace."""
    if request.operation not in (CREATE, UPDATE):
        verb = request.operation.lower()
        return deny(("leases", f"a sidecar may not {verb} Leases"))
    why = f'a sidecar may write only its own pod\'s Lease "{claim.namespace}/{claim.name}"'
    if request.name == c.ELECTION_LEASE:  # a pool pod named like it still may not lead
        return deny(("metadata.name", f'Lease "{c.ELECTION_LEASE}" elects the operator\'s leader'))
    if request.namespace != claim.namespace:
        return deny(("metadata.namespace", why))
    if request.name != claim.name:
        return deny(("metadata.name", why))
    return ALLOW

"""The SandboxReplicaSet controller: keeps `replicas` active Sandboxes for each replica set.

Decisions come from `replicaset_logic`; this module reads the store, adopts and releases
sandboxes by selector (as the ReplicaSet controller adopts pods), creates and deletes through
`Kube`, and writes status only when it changed. Creations go out in doubling batches (kube's
slow start), so a broken template fails on one sandbox, not on five hundred; none go out while
creations it made are still expected, or when its selector would not select what it creates.
Then, and for sandboxes kept Failed because they crashed a shared runtime, `ReplicaFailure`
and a Warning Event say why. Status writes of mere progress are coalesced
(`replicaset_logic.status_wait`): a held-back status is written by a reconcile requeued for
when it is due, so the final status is exact without another event.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from crds import constants as c
from crds.common import LabelSelector
from crds.workloads import unusable_selector
from nest_kube import ApiError
from nest_operator import adapters
from nest_operator.drain_logic import DRAIN_ANNOTATION, OUT_ANNOTATION, Leaving, plan, surge
from nest_operator.kube import Kube
from nest_operator.replicaset_logic import (
    FAILED_CREATE,
    REPLICA_FAILURE,
    Expectations,
    Failure,
    OwnedSandbox,
    ReplicaSetStatus,
    is_stamped,
    reconcile,
    runtime_crash_failure,
    selector_failure,
    status,
    status_wait,
)
from nest_operator.scheduler import SchedulerCache
from nest_operator.store import Kind, Obj, Store, controller_uid, key_of, owner_reference

log = logging.getLogger(__name__)
SLOW_START_INITIAL = 4
FAILED_DELETE = "FailedDelete"
# Failures the next attempt may not repeat (quota, a conflict, an outage): retried with the
# work queue's back-off. The others last until the replica set or its sandboxes change.
RETRIED = frozenset({FAILED_CREATE, FAILED_DELETE})
NAMESPACE_TERMINATING = "NamespaceTerminating"  # core/v1 NamespaceTerminatingCause
# A held-back status this close to due is written: the requeue's timer (the loop's monotonic
# clock) may fire a hair before `clock` (wall time) says it is due.
STATUS_SLACK = 0.05


def namespace_terminating(exc: Exception) -> bool:
    """A create refused because its namespace is being deleted: no failure to report or retry,
    the replica set goes with it (kube's replica set controller skips NamespaceTerminating)."""
    return isinstance(exc, ApiError) and any(
        cause.get("reason") == NAMESPACE_TERMINATING for cause in exc.causes
    )


def sandbox_from_template(rs: Obj) -> dict[str, Any]:
    """A new Sandbox of `rs`, labelled with its function and revision when a deployment owns it."""
    template = rs["spec"]["template"]
    meta = template.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    annotations = dict(meta.get("annotations") or {})
    for ref in rs["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == c.DEPLOYMENT_KIND:
            labels[c.FUNCTION_LABEL] = ref["name"]
    revision = (rs["metadata"].get("annotations") or {}).get(c.REVISION_ANNOTATION)
    if revision:
        annotations[c.REVISION_ANNOTATION] = revision
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.SANDBOX_KIND,
        "metadata": {
            "generateName": f"{rs['metadata']['name']}-",
            "namespace": rs["metadata"]["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(rs)],
        },
        "spec": copy.deepcopy(template["spec"]),
    }


def status_body(result: ReplicaSetStatus, selector: str) -> dict[str, Any]:
    return {
        "replicas": result.replicas,
        "fullyLabeledReplicas": result.fully_labeled_replicas,
        "readyReplicas": result.ready_replicas,
        "availableReplicas": result.available_replicas,
        "observedGeneration": result.observed_generation,
        "conditions": adapters.conditions_to(result.conditions),
        "selector": selector,
    }


def api_message(exc: Exception) -> str:
    """What the API server said, for conditions and Events: its Status message if it sent one."""
    if isinstance(exc, ApiError):
        return f"{exc.status} {exc.reason}: {exc.message[:200]}"
    return f"{type(exc).__name__}: {exc}"


def outcome_unknown(exc: Exception) -> bool:
    """Whether a failed create may still have been stored: no answer, or the server's timeout."""
    if not isinstance(exc, ApiError) or not exc.status:
        return True
    return exc.status == 504 or (exc.status == 500 and "timed out" in exc.message)


class ReplicaSetController:
    """Reconciles one SandboxReplicaSet key ("namespace/name") at a time."""

    def __init__(
        self,
        store: Store,
        kube: Kube,
        cache: SchedulerCache,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.kube = kube
        self.cache = cache
        self.clock = clock
        self.expectations = Expectations()
        # Reconcile a key again after a delay (the work queue's add_after; the manager sets
        # it): when expectations expire, or a held-back status is due, nothing else announces it.
        self.requeue: Callable[[str, float], None] | None = None
        self._status_written: dict[str, float] = {}  # key -> when this process last wrote it
        self._status_due: dict[str, float] = {}  # key -> when a requeue writes its held status
        self._read: dict[str, dict[int, tuple[Obj, OwnedSandbox]]] = {}  # see _snapshots

    def keys_for_sandbox(self, sandbox: Obj) -> list[str]:
        owner = controller_uid(sandbox)
        if owner is None:  # an orphan may be adopted by any replica set of its namespace
            namespace = sandbox["metadata"]["namespace"]
            return [key_of(rs) for rs in self.store.in_namespace(Kind.REPLICASET, namespace)]
        rs = self.store.by_uid(Kind.REPLICASET, owner)
        return [key_of(rs)] if rs is not None else []

    async def reconcile(self, key: str) -> None:
        rs = self.store.get(Kind.REPLICASET, key)
        if rs is None or rs["metadata"].get("deletionTimestamp"):
            self.expectations.forget(key)
            self._status_written.pop(key, None)
            self._status_due.pop(key, None)
            self._read.pop(key, None)
            return  # the garbage collector removes what it owned
        now = self.clock()
        body = sandbox_from_template(rs)
        selector, blocked = _selector(rs, body["metadata"]["labels"])
        owned, collect = await self._claim(rs, selector, body["metadata"]["labels"])
        snapshots = self._snapshots(key, owned)
        self.expectations.observe(key, self._controlled(rs["metadata"]["uid"]))
        waiting = self.expectations.pending(key, now)
        failure = blocked
        if waiting:  # creations still unseen: decide again once they are, or have expired
            if self.requeue is not None:
                self.requeue(key, waiting)
        else:
            failed = await self._manage(
                rs, body, owned, [snapshots[id(s)] for s in owned], collect, blocked is None, now
            )
            failure = failure or failed
        failure = failure or runtime_crash_failure(snapshots.values())
        await self._write_status(rs, selector, failure, snapshots)
        if failure is not None and failure.reason in RETRIED:
            raise RuntimeError(failure.message)  # the work queue retries with back-off

    async def _manage(
        self,
        rs: Obj,
        body: Obj,
        owned: list[Obj],
        snapshots: list[OwnedSandbox],
        collect: list[Obj],
        may_create: bool,
        now: float,
    ) -> Failure | None:
        """Create or delete towards spec.replicas (kube's manageReplicas); what failed, if any."""
        load = {info.pod.uid: info.count for info in self.cache.pods()}
        desired = int(rs["spec"].get("replicas", 1))
        leaving = {
            snap.name: left
            for s, snap in zip(owned, snapshots, strict=True)
            if snap.active and (left := leaving_sandbox(s, snap.ready)) is not None
        }
        staying = [snap for snap in snapshots if snap.name not in leaving]
        decision = reconcile(desired, staying, load, may_create=may_create)
        drain = plan(
            desired,
            sum(1 for snap in staying if snap.active),
            sum(1 for snap in staying if snap.active and snap.ready and snap.phase != "Failed"),
            list(leaving.values()),
            surge(self._max_surge(rs), desired),
            now,
        )
        create = decision.create
        if drain.create_cap is not None:
            create = min(create, drain.create_cap)
        failure = None
        error = await self._create(rs, body, create, now)
        if error is not None and not namespace_terminating(error):
            failure = Failure(FAILED_CREATE, api_message(error))
        by_name = {s["metadata"]["name"]: s for s in owned}
        await self._take_out([by_name[name] for name in drain.take_out], now)
        if drain.wake_in is not None and self.requeue is not None:
            self.requeue(key_of(rs), max(drain.wake_in, 0.1))
        finished = [s for s, snap in zip(owned, snapshots, strict=True) if snap.finished]
        drained = [by_name[name] for name in drain.delete]
        doomed = [by_name[name] for name in decision.delete] + finished + collect + drained
        results = await asyncio.gather(
            *(self.kube.delete(Kind.SANDBOX, s) for s in doomed), return_exceptions=True
        )
        error = next((r for r in results if isinstance(r, Exception)), None)
        if error is not None and failure is None:
            failure = Failure(FAILED_DELETE, api_message(error))
        if failure is not None:
            self.kube.event(rs, "Warning", failure.reason, failure.message)
        return failure

    def _max_surge(self, rs: Obj) -> int | str | None:
        """maxSurge of the deployment owning `rs` (a rolling update's), None without one."""
        for ref in rs["metadata"].get("ownerReferences") or []:
            if ref.get("controller") and ref.get("kind") == c.DEPLOYMENT_KIND:
                d = self.store.by_uid(Kind.DEPLOYMENT, ref.get("uid") or "")
                strategy = ((d or {}).get("spec") or {}).get("strategy") or {}
                value = (strategy.get("rollingUpdate") or {}).get("maxSurge")
                return value if isinstance(value, int | str) else None
        return None

    async def _take_out(self, sandboxes: list[Obj], now: float) -> None:
        """Take leaving sandboxes out of the endpoints (the endpoints controller omits them);
        they are deleted once drained."""
        stamp = adapters.rfc3339(now)
        for sandbox in sandboxes:
            patch = {"metadata": {"annotations": {OUT_ANNOTATION: stamp}}}
            try:
                await self.kube.patch(Kind.SANDBOX, *_ns_name(sandbox), patch)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                continue
            log.info("sandbox %s/%s leaves the endpoints: its pool pod is being deleted and "
                     "its replacement is ready", *_ns_name(sandbox))  # fmt: skip

    def _snapshots(self, key: str, owned: list[Obj]) -> dict[int, OwnedSandbox]:
        """`owned` as the decisions read them, by object id. Each reconcile reads every sandbox
        of the set (a hundred, for one that changed): a stored object is never modified, only
        replaced, so the last reconcile's reading of one still in the store is still right.
        The previous readings hold their objects, so an id found among them is that object."""
        previous = self._read.get(key, {})
        read = {
            id(s): (s, hit[1] if (hit := previous.get(id(s))) else adapters.owned_sandbox(s))
            for s in owned
        }
        self._read[key] = read
        return {ident: snapshot for ident, (_, snapshot) in read.items()}

    def _owned(self, rs: Obj) -> list[Obj]:
        """The sandboxes whose controller reference names `rs`, of its namespace: an owner
        reference never crosses namespaces (the garbage collector ignores one that does)."""
        namespace = rs["metadata"]["namespace"]
        owned = self.store.owned(Kind.SANDBOX, rs["metadata"]["uid"])
        return [s for s in owned if s["metadata"]["namespace"] == namespace]

    def _controlled(self, uid: str) -> list[str]:
        return [s["metadata"]["uid"] for s in self.store.owned(Kind.SANDBOX, uid)]

    async def _claim(
        self, rs: Obj, selector: LabelSelector | None, stamped: dict[str, str]
    ) -> tuple[list[Obj], list[Obj]]:
        """Owned sandboxes after adopting matching orphans and releasing non-matching ones, and
        the ones to collect: it controls them, its selector does not select them, and they carry
        just the labels it created them with, so nobody relabelled them out of the set — it made
        them and can never own them, and released they would be left behind forever.

        Without a usable selector (`unusable_selector`: empty, or by the labels binding sets)
        nothing is adopted, released or collected: what it selects says nothing about what it
        owns, and the operator never deletes what it does not understand.
        """
        uid = rs["metadata"]["uid"]
        if selector is None or unusable_selector(selector) is not None:
            return self._owned(rs), []
        # What it controls and what nobody does: every other sandbox of the namespace has a
        # controller of its own and is none of its business.
        candidates = self._owned(rs) + self.store.orphans(Kind.SANDBOX, rs["metadata"]["namespace"])
        owned, collect = [], []
        for sandbox in sorted(candidates, key=key_of):
            owner = controller_uid(sandbox)
            labels = sandbox["metadata"].get("labels") or {}
            matches = selector.matches(labels)
            deleting = bool(sandbox["metadata"].get("deletionTimestamp"))
            if owner == uid and matches:
                owned.append(sandbox)
            elif owner == uid and not deleting and is_stamped(labels, stamped):
                collect.append(sandbox)
            elif owner == uid and not deleting:
                patch: dict[str, Any] = {"metadata": {"ownerReferences": None}}
                await self.kube.patch(Kind.SANDBOX, *_ns_name(sandbox), patch)
            elif owner is None and matches and not deleting:
                patch = {"metadata": {"ownerReferences": [owner_reference(rs)]}}
                owned.append(await self.kube.patch(Kind.SANDBOX, *_ns_name(sandbox), patch))
        if collect:
            names = ", ".join(sorted(s["metadata"]["name"] for s in collect))
            message = (
                f"Deleting Sandboxes its selector does not match, made from its template: {names}"
            )
            self.kube.event(rs, "Normal", "SandboxesCollected", message[:1024])
        return owned, collect

    async def _create(self, rs: Obj, body: Obj, count: int, now: float) -> Exception | None:
        """Create `count` sandboxes in doubling batches, stopping after a batch with a failure
        (kube's slowStartBatch); the first error, if any.

        Expectations are raised by `count` first and lowered for every creation refused or never
        attempted; the ones made are seen in the store (write-through), and one whose outcome is
        unknown is waited for until the watch shows it or the expectation expires.
        """
        if count <= 0:
            return None
        key, uid = key_of(rs), rs["metadata"]["uid"]
        namespace = rs["metadata"]["namespace"]
        self.expectations.expect(key, count, self._controlled(uid), now)
        batch, remaining, error = SLOW_START_INITIAL, count, None
        while remaining > 0 and error is None:
            size = min(batch, remaining)
            results = await asyncio.gather(
                *(
                    self.kube.create(Kind.SANDBOX, namespace, copy.deepcopy(body))
                    for _ in range(size)
                ),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, Exception):
                    error = error or result
                    if not outcome_unknown(result):
                        self.expectations.lower(key)
                elif isinstance(result, BaseException):
                    raise result
            remaining -= size
            batch *= 2
        self.expectations.lower(key, remaining)
        self.expectations.observe(key, self._controlled(uid))
        return error

    async def _write_status(
        self,
        rs: Obj,
        selector: LabelSelector | None,
        failure: Failure | None,
        snapshots: dict[int, OwnedSandbox],
    ) -> None:
        """Write the status of what it owns now (`snapshots`: of the objects it claimed, by id;
        those it created or changed since are read anew), unless it is held back."""
        current = rs.get("status") or {}
        owned = self._owned(rs)
        template_labels = ((rs["spec"].get("template") or {}).get("metadata") or {}).get("labels")
        result = status(
            [snapshots.get(id(s)) or adapters.owned_sandbox(s) for s in owned],
            template_labels or {},
            int(rs["metadata"].get("generation", 1)),
            adapters.conditions_from(current),
            self.clock(),
            failure.message if failure is not None else None,
            failure.reason if failure is not None else FAILED_CREATE,
        )
        announced = _replica_failure(current)
        if failure is not None and failure.reason not in RETRIED and announced != failure:
            self.kube.event(rs, "Warning", failure.reason, failure.message)  # once per change
        selector_string = selector.to_selector_string() if selector is not None else ""
        body = status_body(result, selector_string)
        if all(current.get(k) == v for k, v in body.items()):
            return
        key, now = key_of(rs), self.clock()
        written = self._status_written.get(key)
        desired = int(rs["spec"].get("replicas", 1))
        wait = status_wait(current, body, desired, None if written is None else now - written)
        if wait > STATUS_SLACK and self.requeue is not None:
            due = self._status_due.get(key)
            if due is None or due <= now or due > now + wait:  # else a requeue is set already
                self._status_due[key] = now + wait
                self.requeue(key, wait)
            return
        await self.kube.patch_status(Kind.REPLICASET, *_ns_name(rs), body)
        self._status_written[key] = now
        self._status_due.pop(key, None)


def leaving_sandbox(sandbox: Obj, ready: bool) -> Leaving | None:
    """`sandbox` as a leaving one when the lifecycle controller marked its pod as draining."""
    annotations = sandbox["metadata"].get("annotations") or {}
    deadline = annotations.get(DRAIN_ANNOTATION)
    if not deadline:
        return None
    out = annotations.get(OUT_ANNOTATION)
    timeout = ((sandbox.get("spec") or {}).get("function") or {}).get("timeoutSeconds")
    return Leaving(
        name=sandbox["metadata"]["name"],
        ready=ready and (sandbox.get("status") or {}).get("phase") == "Running",
        deadline=adapters.timestamp(deadline),
        out_since=adapters.timestamp(out) if out else None,
        timeout=float(timeout or 30),
    )


def _selector(rs: Obj, stamped: dict[str, str]) -> tuple[LabelSelector | None, Failure | None]:
    """The replica set's selector (None if it does not parse) and whether it may create."""
    template_labels = ((rs["spec"].get("template") or {}).get("metadata") or {}).get("labels")
    try:
        selector = LabelSelector.model_validate(rs["spec"].get("selector") or {})
    except ValidationError as exc:
        why = "; ".join(e["msg"] for e in exc.errors())
        return None, selector_failure(None, why, stamped, template_labels or {})
    return selector, selector_failure(selector, None, stamped, template_labels or {})


def _replica_failure(status_: Obj) -> Failure | None:
    for cond in status_.get("conditions") or []:
        if cond.get("type") == REPLICA_FAILURE and cond.get("status") == "True":
            return Failure(cond.get("reason") or "", cond.get("message") or "")
    return None


def _ns_name(obj: Obj) -> tuple[str, str]:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]

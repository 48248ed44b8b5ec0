"""The endpoints controller: one SandboxEndpoints per SandboxDeployment, listing its addresses.

The gateway and downstream platforms route from this one small object per function instead of
watching every Sandbox, as kube-proxy reads Endpoints rather than Pods. The address list is a
pure function of the deployment's sandboxes; the object is written only when it changed. A
sandbox its replica set took out while draining a pool pod (`drain_logic.OUT_ANNOTATION`) is
listed not ready, as an EndpointSlice lists a terminating pod: the gateway sends it nothing new.

A sandbox that is bound and still starting (Pending, Scheduled, Starting) is left out of the list
for its first `STARTING_DELAY` seconds, as the sidecar's status manager holds those passing
phases for a second: most starts end Running well within it, and writing the starting sandbox
as not ready first would put that write in flight just when it turns Ready, so the write a
function waking from zero waits on would queue behind it (the key is reconciled one at a time):
traced at 20-60 ms of a cold start. A start slower than that is listed not ready after it.

Writes are batched unless a reader acts on them now (issue 14: a 2,000-sandbox apply wrote the
list 0.3 times per sandbox). Written at once (`urgent`): the first status, a ready address that
left the list or changed (the gateway must stop sending to it), and more ready addresses by half
of those listed, which includes any from zero (the write a function waking from zero waits on):
a ramp to 100 is about a dozen writes. Any other change (a few more ready, the not-ready list)
waits in the `status_batch.StatusBatch` the deployment controller's status waits in too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from crds import constants as c
from nest_kube import ApiError
from nest_operator import adapters
from nest_operator.drain_logic import OUT_ANNOTATION
from nest_operator.kube import Kube
from nest_operator.status_batch import StatusBatch
from nest_operator.store import Kind, Obj, Store, controller_uid, key_of, owner_reference

# How long a bound sandbox may be starting before it is listed (not ready): as long as the
# sidecar's status manager holds a passing phase (one constant for both).
STARTING_DELAY = c.PASSING_PHASE_HOLD_SECONDS
STARTING_PHASES = frozenset({"", "Pending", "Scheduled", "Starting"})
# More ready addresses by this share of those listed are written at once (from zero: any).
GROWTH: Final = 0.5


def starting(sandbox: Obj) -> bool:
    """Bound, not being deleted, and not yet Running (nor ended): on its way to Ready."""
    meta, spec = sandbox["metadata"], sandbox.get("spec") or {}
    phase = str((sandbox.get("status") or {}).get("phase") or "")
    return (
        bool(spec.get("podName")) and not meta.get("deletionTimestamp") and phase in STARTING_PHASES
    )


def hold_starting(
    sandboxes: Iterable[Obj],
    seen: Mapping[str, float],
    now: float,
    listed: frozenset[str] = frozenset(),
    delay: float = STARTING_DELAY,
) -> tuple[set[str], dict[str, float], float | None]:
    """Which starting sandboxes (by uid) to leave out of the list for now: those first seen
    starting (`seen`: uid -> when) under `delay` ago, unless already `listed` (a restart is not
    taken out of the list). Returns them, the `seen` to keep (only sandboxes still starting),
    and in how many seconds the earliest one is due (None: none)."""
    held: set[str] = set()
    kept: dict[str, float] = {}
    due: float | None = None
    for sandbox in sandboxes:
        if not starting(sandbox):
            continue
        uid = str(sandbox["metadata"]["uid"])
        since = kept[uid] = seen.get(uid, now)
        left = since + delay - now
        if left > 0 and uid not in listed:
            held.add(uid)
            due = left if due is None else min(due, left)
    return held, kept, due


def addresses(sandboxes: list[tuple[Obj, int]]) -> dict[str, Any]:
    """Endpoints status from (sandbox, revision) pairs: ready ones and the rest, by name."""
    ready: list[dict[str, Any]] = []
    not_ready: list[dict[str, Any]] = []
    for sandbox, revision in sorted(sandboxes, key=lambda pair: pair[0]["metadata"]["name"]):
        meta, spec, status = (
            sandbox["metadata"],
            sandbox.get("spec") or {},
            sandbox.get("status") or {},
        )
        if meta.get("deletionTimestamp") or not spec.get("podName"):
            continue  # unbound sandboxes have no address yet, ready or not
        address: dict[str, Any] = {
            "sandbox": meta["name"],
            "uid": meta["uid"],
            "revision": revision,
        }
        if spec.get("podName"):
            address["podName"] = spec["podName"]
        if status.get("podIP"):
            address["podIP"] = status["podIP"]
        if status.get("port"):
            address["port"] = status["port"]
        drained = OUT_ANNOTATION in (meta.get("annotations") or {})
        is_ready = (
            not drained  # leaving a pod being deleted: no new call, the ones in flight end
            and status.get("phase") == "Running"
            and adapters.condition_true(sandbox, "Ready")
            and "podIP" in address
            and "port" in address
        )
        (ready if is_ready else not_ready).append(address)
    return {
        "ready": ready,
        "notReady": not_ready,
        "readyCount": len(ready),
        "notReadyCount": len(not_ready),
    }


def urgent(current: Mapping[str, Any], desired: Mapping[str, Any], growth: float = GROWTH) -> bool:
    """Whether the change from the listed status `current` to `desired` is written at once."""
    if "readyCount" not in current:
        return True  # never written: readers (the gateway, `nest describe`) wait for a status
    listed = {str(address.get("uid")): address for address in current.get("ready") or []}
    ready = {str(address["uid"]): address for address in desired["ready"]}
    if any(ready.get(uid) != address for uid, address in listed.items()):
        return True  # not ready any more, drained, gone, or moved: no new call may go to it
    added = len(ready) - len(listed)
    return added > 0 and added >= growth * len(listed)


class EndpointsController:
    """Keeps each deployment's SandboxEndpoints current; keyed like the deployment."""

    def __init__(
        self, store: Store, kube: Kube, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.kube = kube
        self.clock = clock
        # Reconcile a key again after a delay (the work queue's add_after; the manager sets
        # it): a starting sandbox's delay ends without any event announcing it.
        self.requeue: Callable[[str, float], None] | None = None
        self._starting: dict[str, dict[str, float]] = {}  # key -> starting uid -> first seen
        self.batch = StatusBatch()

    def key_for_sandbox(self, sandbox: Obj) -> str | None:
        rs_uid = controller_uid(sandbox)
        rs = self.store.by_uid(Kind.REPLICASET, rs_uid) if rs_uid else None
        d_uid = controller_uid(rs) if rs is not None else None
        d = self.store.by_uid(Kind.DEPLOYMENT, d_uid) if d_uid else None
        return key_of(d) if d is not None else None

    async def reconcile(self, key: str) -> None:
        d = self.store.get(Kind.DEPLOYMENT, key)
        if d is None or d["metadata"].get("deletionTimestamp"):
            self._starting.pop(key, None)
            self.batch.done(key)
            return  # owned by the deployment: the garbage collector removes it
        pairs = []
        for rs in self.store.owned(Kind.REPLICASET, d["metadata"]["uid"]):
            revision = int(
                (rs["metadata"].get("annotations") or {}).get(c.REVISION_ANNOTATION) or 0
            )
            pairs += [(s, revision) for s in self.store.owned(Kind.SANDBOX, rs["metadata"]["uid"])]
        endpoints = self.store.get(Kind.ENDPOINTS, key)
        listed = frozenset(
            str(address.get("uid"))
            for field in ("ready", "notReady")
            for address in ((endpoints or {}).get("status") or {}).get(field) or []
        )
        held, seen, due = hold_starting(
            (s for s, _ in pairs), self._starting.get(key, {}), self.clock(), listed
        )
        if seen:
            self._starting[key] = seen
        else:
            self._starting.pop(key, None)
        if due is not None and self.requeue is not None:
            self.requeue(key, due)
        desired = addresses([(s, r) for s, r in pairs if s["metadata"]["uid"] not in held])
        namespace, name = d["metadata"]["namespace"], d["metadata"]["name"]
        if endpoints is None:
            body = {
                "apiVersion": c.API_VERSION,
                "kind": c.ENDPOINTS_KIND,
                "metadata": {"name": name, "namespace": namespace,
                             "ownerReferences": [owner_reference(d)]},
            }  # fmt: skip
            try:
                endpoints = await self.kube.create(Kind.ENDPOINTS, namespace, body)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                return  # created meanwhile; its watch event brings us back
        current = endpoints.get("status") or {}
        if all(current.get(k) == v for k, v in desired.items()):
            self.batch.done(key)
            return
        write, after = self.batch.admit(key, desired, self.clock(), urgent(current, desired))
        if after is not None and self.requeue is not None:
            self.requeue(key, after)
        if write:
            await self.kube.patch_status(Kind.ENDPOINTS, namespace, name, desired)

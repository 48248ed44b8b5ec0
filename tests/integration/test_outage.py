"""A 3-minute control-plane outage under a request loop: no request fails, no sandbox is evicted.

Why (issue 13): a fault study found the data plane answering all through a long outage, and
then every healthy sandbox evicted at once after it, because the pool Leases had not been
renewed while nobody could write them and the operator judged them on its first look after
reconnecting; and the gateway's authentication asked the API server, so a cache miss in the
outage was a 500. The acceptance: with the API server down for 3 minutes, no failed request
through a gateway that was already serving the caller, and no sandbox evicted afterwards. (It
also covers "the API server down for 20 s: zero failed requests".)

The shared cluster cannot be stopped (every xdist worker uses it), so this module brings up a
private one (tests/private_nest.py: its own ports and pod addresses, Nest deployed from deploy/
with one operator replica, two gateways, two pool pods), deploys one function of two replicas on
the two pool pods, runs bench.chaos_load's open request loop through both gateways, and holds
the private kube-apiserver stopped (SIGSTOP: alive to the supervisor, silent to everybody else)
for OUTAGE_SECONDS. After SIGCONT it waits until the control plane is known to work again for
everybody involved (the API server ready, every pool pod's Lease renewed after the outage by its
sidecar, and the operator's leader reconciling a change made after it), then keeps the loop
running for the operator's whole lifecycle grace past that point (its --startup-grace, at least
a Lease's duration, plus a margin: read from what runs), which is when a judgement made on
stale Leases would evict. Checked: every request answered 200 (those sent during the outage
too), the same Sandboxes (uids) before and after, none marked Evicted, no Evicted Event.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psutil
import pytest
from kubernetes import client

from bench import chaos
from bench import chaos_faults as faults
from bench.chaos_load import Load, Outcome, Scene
from nest_operator.lifecycle_logic import Policy
from tests import private_nest
from tests.kube import wait_for

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("NEST_KUBECONFIG")), reason="stops a local control plane of its own"
)

OUTAGE_SECONDS = 180.0  # the 3 minutes, longer than the pool Lease (40 s) by far
FUNCTION = {"outage-sub": "subprocess"}  # one function, 2 replicas (chaos.REPLICAS)
RATE = 5.0  # requests per second: enough to see a gap, little CPU on a shared machine
# Beyond the operator's grace: its sweep and resync periods (2 s) and the time between our
# "resynced" probe and its lifecycle informers' own recovery.
GRACE_MARGIN = 20.0
RESYNC_DEADLINE = 180.0  # the supervisor's back-offs, the informers' reconnect back-offs
T = faults.TIMEOUT


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[private_nest.PrivateNest]:
    """One private cluster with Nest, for the module; down with purge at its end, whatever
    happened (a component left stopped is resumed first)."""
    plane = private_nest.plane_at(tmp_path_factory.mktemp("outage") / "c")
    started = time.monotonic()
    try:
        nest = private_nest.bring_up(plane)
        print(f"\nprivate cluster with Nest up in {time.monotonic() - started:.0f}s")
        yield nest
    finally:
        private_nest.down(plane)


# -- what the cluster says ----------------------------------------------------------------------


def _sandboxes(scene: Scene) -> dict[str, dict[str, Any]]:
    return {b["metadata"]["uid"]: b for b in chaos.listed(scene, "sandboxes")}


def _evicted(scene: Scene) -> list[str]:
    """Sandboxes marked Evicted, and Evicted Events, in the function's namespace."""
    marked = [
        f"{b['metadata']['name']}: {(b.get('status') or {}).get('message')}"
        for b in _sandboxes(scene).values()
        if (b.get("status") or {}).get("reason") == "Evicted"
    ]
    events = scene.core.list_namespaced_event(scene.namespace, _request_timeout=T).items
    return marked + [f"Event {e.involved_object.name}: {e.message}" for e in events
                     if e.reason == "Evicted"]  # fmt: skip


def _stamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _pool_leases(scene: Scene) -> list[dict[str, Any]]:
    coordination = client.CoordinationV1Api(scene.api)
    listed = coordination.list_namespaced_lease(faults.SYSTEM, _request_timeout=T)
    return [
        lease for lease in faults.plain(scene.api, listed)["items"]
        if (lease["metadata"].get("labels") or {}).get("nest.sandbox.dev/pool")
    ]  # fmt: skip


def _leases_renewed_after(scene: Scene, wall: float) -> bool:
    """Every pool pod's Lease (its sidecar's) renewed after wall-clock `wall`."""
    leases = {x["metadata"]["name"]: x["spec"] for x in _pool_leases(scene)}
    pods = faults.pods(scene.core, faults.POOL_SELECTOR)
    renewed = [leases.get(p["metadata"]["name"], {}).get("renewTime") for p in pods]
    return bool(pods) and all(r is not None and _stamp(r) > wall for r in renewed)


def _reconciles(scene: Scene, name: str, deadline_seconds: int) -> bool:
    """The operator's leader acts on a change made now: a spec field outside the template
    (progressDeadlineSeconds: no rollout) gives a new generation, which it must observe."""
    patch = {"spec": {"progressDeadlineSeconds": deadline_seconds}}
    done: Any = scene.custom.patch_namespaced_custom_object(
        chaos.GROUP, chaos.VERSION, scene.namespace, "sandboxdeployments", name, patch,
        _request_timeout=T,
    )  # fmt: skip
    generation = done["metadata"]["generation"]

    def observed() -> bool:
        dep: Any = scene.custom.get_namespaced_custom_object(
            chaos.GROUP, chaos.VERSION, scene.namespace, "sandboxdeployments", name,
            _request_timeout=T,
        )  # fmt: skip
        return int((dep.get("status") or {}).get("observedGeneration") or 0) >= int(generation)

    wait_for(observed, 60, f"the operator to observe generation {generation} of {name}", 0.5)
    return True


def lifecycle_grace(scene: Scene) -> float:
    """How long after the operator's watches recover it may still evict for a stale Lease:
    its --startup-grace (NEST_STARTUP_GRACE of the running Deployment, else the default), at
    least the longest pool Lease's duration."""
    dep = faults.plain(
        scene.api,
        scene.apps.read_namespaced_deployment("nest-operator", faults.SYSTEM, _request_timeout=T),
    )
    containers = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for c in containers for e in c.get("env") or []}
    grace = float(env.get("NEST_STARTUP_GRACE") or Policy().startup_grace)
    durations = [float(x["spec"].get("leaseDurationSeconds") or 0) for x in _pool_leases(scene)]
    return max([grace, *durations])


# -- the test -----------------------------------------------------------------------------------


def _scene(nest: private_nest.PrivateNest) -> Scene:
    """The function deployed through the private gateway, its 2 replicas on the 2 pool pods."""
    run = nest.runner()
    name = private_nest.namespace(nest, f"outage-{uuid.uuid4().hex[:6]}")
    token = chaos.token_for(run, client.CoreV1Api(nest.api), name)
    scene = Scene(nest.api, run, name, token, functions=dict(FUNCTION), rate=RATE,
                  node=faults.node_key(nest.plane.paths.state))  # fmt: skip
    chaos.deploy_functions(scene)

    def converged() -> chaos.Inventory | None:
        judged = chaos.inventory(scene)
        return None if judged.problems else judged

    judged = wait_for(converged, 180, "the function Running, both replicas Ready", 0.5)
    if min(judged.spread.values(), default=0) < 2:
        chaos.roll(scene, 1)  # placed afresh, on the two pods as they are now
        judged = wait_for(converged, 180, "the re-placed revision Running", 0.5)
    assert min(judged.spread.values(), default=0) == 2, judged.spread
    return scene


def _served_by_every_gateway(load: Load) -> bool:
    """Each gateway the loop routes to has answered the caller 200 already."""
    served = {o.address for o in load.outcomes if not o.failed}
    return bool(load.gateways.addresses) and set(load.gateways.addresses) <= served


async def _outage(scene: Scene, apiserver: psutil.Process, prefix: str) -> dict[str, Any]:
    """The loop through both gateways; the API server stopped, resumed; the loop kept past the
    operator's grace. What happened, with the times (monotonic) that split the outcomes."""
    async with Load(scene) as load:
        ready = await chaos.until(lambda: _served_by_every_gateway(load), time.monotonic() + 60)
        assert ready, f"not every gateway served the caller: {load.gateways.addresses}"
        assert all(a.startswith(prefix) for a in load.gateways.addresses), prefix  # ours only
        stopped_at = time.monotonic()
        helper = faults.hold_stopped(apiserver, OUTAGE_SECONDS)
        # SIGSTOP reaches every thread of a busy Go process a moment after it is sent.
        was_stopped = await chaos.until(
            lambda: apiserver.status() == psutil.STATUS_STOPPED, time.monotonic() + 10
        )
        await asyncio.to_thread(helper.wait)  # the outage itself: its length is the fault
        resumed_at, resumed_wall = time.monotonic(), time.time()
        name = next(iter(scene.functions))

        def resynced() -> bool:
            return _leases_renewed_after(scene, resumed_wall) and _reconciles(scene, name, 601)

        synced = await chaos.until(resynced, resumed_at + RESYNC_DEADLINE)
        synced_at = time.monotonic()
        assert synced, "the control plane did not come back for the sidecars and the operator"
        grace = await asyncio.to_thread(lifecycle_grace, scene)
        # Past the grace, failing fast on the first eviction: a negative observed for as long
        # as the operator could still act on what the outage left, not a synchronisation.
        evicted = await chaos.until(lambda: bool(_evicted(scene)), synced_at + grace + GRACE_MARGIN)
    return {"load": load.outcomes, "stopped_at": stopped_at, "resumed_at": resumed_at,
            "synced_s": synced_at - resumed_at, "grace": grace, "was_stopped": was_stopped,
            "evicted_during_grace": evicted}  # fmt: skip


def _failures(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.failed]


def test_a_three_minute_api_server_outage_fails_no_request_and_evicts_no_sandbox(
    private: private_nest.PrivateNest,
) -> None:
    scene = _scene(private)
    before = _sandboxes(scene)
    sets_before = {s["metadata"]["uid"] for s in chaos.listed(scene, "sandboxreplicasets")}
    apiserver = private.plane.procs.find("kube-apiserver")
    assert apiserver is not None

    seen = asyncio.run(_outage(scene, apiserver, private.pod_ip_prefix))

    assert seen["was_stopped"], "the API server was not stopped: no outage was staged"
    outcomes: list[Outcome] = seen["load"]
    during = [o for o in outcomes if seen["stopped_at"] <= o.at < seen["resumed_at"]]
    assert len(during) >= RATE * OUTAGE_SECONDS / 2, len(during)  # the loop ran through it
    failed = _failures(outcomes)
    assert not failed, (
        f"{len(failed)} of {len(outcomes)} failed "
        f"({len(_failures(during))} during the outage): "
        + "; ".join(sorted({f"+{o.at - seen['stopped_at']:.1f}s {o.address} {o.label}: "
                            f"{o.body[:120]}" for o in failed})[:5])
    )  # fmt: skip
    assert not seen["evicted_during_grace"] and not _evicted(scene), _evicted(scene)
    after = _sandboxes(scene)
    assert set(after) == set(before), "Sandboxes replaced after the outage"
    assert {s["metadata"]["uid"] for s in chaos.listed(scene, "sandboxreplicasets")} == sets_before
    assert all((b.get("status") or {}).get("phase") == "Running" for b in after.values()), after
    orphans = faults.orphans(scene.core, scene.custom, scene.node)
    assert not orphans, orphans
    print(
        f"\noutage {OUTAGE_SECONDS:g}s: {len(outcomes)} requests ({len(during)} during), "
        f"0 failed; resynced {seen['synced_s']:.0f}s after; watched {seen['grace']:g}s grace "
        f"+ {GRACE_MARGIN:g}s: no eviction"
    )

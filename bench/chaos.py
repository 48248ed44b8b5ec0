"""chaos: each component killed mid-rollout under a request loop; what is lost, what converges.

Why: issue 13 asks that no request be lost when any one piece goes away, and that nothing be
lost, duplicated or left running after the system converges again. This harness measures it on
the local cluster, one fault at a time with convergence in between: kill -9 of the operator
(the leader, when there are several), of one gateway replica, of a pool pod's runtime; a
graceful pool-pod delete; `kubectl rollout restart deployment/nest-pool`; the API server and
etcd held down 20 s. Functions of 2 replicas each (subprocess and namespace isolation, spread
over the pool pods by the scheduler; where they landed is reported) are invoked through the
gateway at a fixed rate per function, open loop (a request is sent on its tick whether or not
the previous one answered), from before the fault until convergence; every request's outcome is
recorded with its time. Each fault starts a rollout first (a template change), as upgrades do.

Per fault: requests, failed (anything but a 200, by status or error), the convergence time
(fault injected -> the fault's effect seen and undone, every replica set at its replicas with
all of them Running and Ready, no older revision left, no orphan process), sandboxes before and
after, lost and duplicated sandboxes, orphans. The caller reaches the gateways as a Service
would route (the local cluster has no kube-proxy): round-robin over its Ready pods, listed twice
a second; a connection refused before anything was sent is tried once on another address (an
L7 balancer's connect-failure retry); those are counted as `retried`, not hidden.

`NEST_CHAOS_FAULTS` (comma-separated names) picks faults; `NEST_CHAOS_RATE` requests per second
per function (default 10); `NEST_CHAOS_ROLLOUT=0` injects the faults without a rollout.
tests/integration/test_chaos.py runs a reduced set in CI.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from bench import chaos_faults as faults
from bench.chaos_load import Gateways, Load, Scene
from bench.common import Report

GROUP, VERSION = "nest.sandbox.dev", "v1alpha1"
T = faults.TIMEOUT
HANDLER = "def handler(event, context):\n    return {'ok': True, 'seq': event.get('seq')}\n"
REPLICAS = 2
LEAD_IN = 2.0  # seconds of load before the fault, so "failed" covers the fault's start
CONVERGENCE_DEADLINE = 150.0
FAULTS = ("runtime-kill", "operator-kill", "gateway-kill", "pool-pod-delete", "rollout-restart",
          "apiserver-down", "etcd-down")  # fmt: skip


def token_for(kubectl: Callable[..., str], core: client.CoreV1Api, namespace: str) -> str:
    """A ServiceAccount token bound to nest-function-developer in `namespace` (created here)."""
    name, role = "chaos", "--clusterrole=nest-function-developer"
    kubectl("-n", namespace, "create", "serviceaccount", name)
    kubectl("-n", namespace, "create", "rolebinding", name, role,
            f"--serviceaccount={namespace}:{name}")  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        account = faults.plain(
            core.api_client, core.read_namespaced_service_account(name, namespace)
        )
        if account.get("secrets"):
            secret = core.read_namespaced_secret(account["secrets"][0]["name"], namespace)
            return base64.b64decode((secret.data or {})["token"]).decode()
        time.sleep(0.2)  # polling for the token controller, bounded by the deadline
    raise RuntimeError(f"no token for ServiceAccount {namespace}/{name}")


# -- what the cluster holds ---------------------------------------------------------------------


@dataclass
class Inventory:
    """The test namespace's replica sets and sandboxes, judged."""

    live: int  # Sandboxes without a deletionTimestamp
    lost: int  # replicas with no sandbox (summed over replica sets)
    duplicated: int  # sandboxes beyond their replica set's replicas
    problems: list[str]
    spread: dict[str, int]  # function -> distinct pool pods of its current replica set


def listed(scene: Scene, plural: str) -> list[dict[str, Any]]:
    found: Any = scene.custom.list_namespaced_custom_object(
        GROUP, VERSION, scene.namespace, plural, _request_timeout=T
    )
    items: list[dict[str, Any]] = found["items"]
    return items


def _owners(obj: dict[str, Any]) -> set[str]:
    return {o.get("uid") for o in obj["metadata"].get("ownerReferences") or []}


def inventory(scene: Scene) -> Inventory:
    """The test namespace's objects as they are now, judged."""
    sets, boxes = listed(scene, "sandboxreplicasets"), listed(scene, "sandboxes")
    deps, eps = listed(scene, "sandboxdeployments"), listed(scene, "sandboxendpoints")
    return judge(deps, eps, sets, boxes)


def judge(
    deps: list[dict[str, Any]], eps: list[dict[str, Any]], sets: list[dict[str, Any]],
    boxes: list[dict[str, Any]],
) -> Inventory:  # fmt: skip
    """Converged means: every deployment observed and at its replicas, updated and ready; its
    endpoints list exactly that many ready addresses; every replica set (old revisions too, at
    0) owns exactly its replicas of live sandboxes, all Running, none still deleting. Lost and
    duplicated count the difference per replica set, never netted across them."""
    problems: list[str] = []
    lost = duplicated = 0
    spread: dict[str, int] = {}
    current: dict[str, int] = {}
    for dep in deps:
        name, want, status = (
            dep["metadata"]["name"],
            dep["spec"].get("replicas", 0),
            dep.get("status") or {},
        )
        if (status.get("observedGeneration") or 0) < dep["metadata"]["generation"]:
            problems.append(f"{name}: generation not observed")
        for key in ("replicas", "updatedReplicas", "readyReplicas"):
            if status.get(key, 0) != want:
                problems.append(f"{name}: {key} {status.get(key, 0)} of {want}")
        current[name] = want
    for ep in eps:
        ready = (ep.get("status") or {}).get("ready") or []
        want = current.get(ep["metadata"]["name"])
        if want is not None and len(ready) != want:
            problems.append(f"{ep['metadata']['name']}: {len(ready)} ready endpoints of {want}")
    names = [b["metadata"]["name"] for b in boxes]
    if len(names) != len(set(names)):
        problems.append("a sandbox name listed twice")
    for rs in sets:
        rs_name, want = rs["metadata"]["name"], rs["spec"].get("replicas", 0)
        uid = rs["metadata"]["uid"]
        owned = [b for b in boxes if uid in _owners(b)]
        live = [b for b in owned if not b["metadata"].get("deletionTimestamp")]
        lost += max(0, want - len(live))
        duplicated += max(0, len(live) - want)
        if len(live) != want or len(owned) != len(live):
            problems.append(
                f"{rs_name}: {len(live)} live + {len(owned) - len(live)} deleting of {want}"
            )
        for b in live:
            phase = (b.get("status") or {}).get("phase")
            if phase != "Running":
                problems.append(f"{b['metadata']['name']}: {phase}")
        if want:
            function = (rs["metadata"].get("labels") or {}).get(f"{GROUP}/function") or rs_name
            spread[function] = len({b["spec"].get("podName") for b in live})
    total = sum(1 for b in boxes if not b["metadata"].get("deletionTimestamp"))
    return Inventory(total, lost, duplicated, problems, spread)


def deploy_functions(scene: Scene) -> None:
    """The scene's functions, REPLICAS each, through the gateway's API (as a platform would)."""
    import requests

    gateways = Gateways(scene.core)
    gateways.refresh()
    address = gateways.pick()
    if address is None:
        raise RuntimeError("no ready nest-gateway endpoint")
    for name, isolation in scene.functions.items():
        body: dict[str, Any] = {"name": name, "handler": "main:handler", "isolation": isolation,
                                "files": {"main.py": HANDLER}, "replicas": REPLICAS}  # fmt: skip
        resp = requests.post(
            f"http://{address}/v1/namespaces/{scene.namespace}/functions", json=body,
            headers={"Authorization": f"Bearer {scene.token}"}, timeout=60,
        )  # fmt: skip
        if resp.status_code != 201:
            raise RuntimeError(f"creating {name}: {resp.status_code} {resp.text}")


def other_tenants(scene: Scene) -> list[str]:
    """Other namespaces with namespace-mode sandboxes on pool pods: TenantIsolation keeps every
    other namespace off those pods, so our replicas may not get two pods while they are there."""
    found: Any = scene.custom.list_cluster_custom_object(
        GROUP, VERSION, "sandboxes", _request_timeout=T
    )
    return sorted({
        s["metadata"]["namespace"] for s in found["items"]
        if s["metadata"]["namespace"] != scene.namespace and s["spec"].get("podName")
        and s["spec"]["function"].get("isolation") == "namespace"
    })  # fmt: skip


def roll(scene: Scene, generation: int) -> None:
    """Start a rollout of every function: a template change makes a new replica set."""
    for name in scene.functions:
        patch = {
            "spec": {"template": {"spec": {"function": {"env": {"CHAOS_ROLL": str(generation)}}}}}
        }
        scene.custom.patch_namespaced_custom_object(
            GROUP, VERSION, scene.namespace, "sandboxdeployments", name, patch, _request_timeout=T
        )


async def until(probe: Callable[[], bool], deadline: float) -> bool:
    """Poll a (blocking) probe off the loop until true or the deadline; a raise is "not yet"."""
    while time.monotonic() < deadline:
        try:
            if await asyncio.to_thread(probe):
                return True
        except Exception:
            pass
        await asyncio.sleep(0.25)  # between polls; the deadline is what bounds the wait
    return False


def settled(scene: Scene, known: frozenset[int] = frozenset()) -> bool:
    """Every check passes: the inventory is clean, no new orphan (`known`: orphans there before
    the fault, another user's), the system Deployments settled."""
    if inventory(scene).problems:
        return False
    if set(faults.orphans(scene.core, scene.custom, scene.node)) - known:
        return False
    return faults.system_settled(scene.core, scene.apps)


# -- one fault ----------------------------------------------------------------------------------


def _pool_pod_of(scene: Scene) -> dict[str, Any]:
    """The pool pod holding the first running sandbox of the first function (so the fault hits
    a pod our functions are on)."""
    boxes = listed(scene, "sandboxes")
    held = sorted(b["spec"].get("podName") or "" for b in boxes if b["spec"].get("podName"))
    for pod in faults.pods(scene.core, faults.POOL_SELECTOR):
        if held and pod["metadata"]["name"] == held[0]:
            return pod
    raise RuntimeError("no pool pod holds a sandbox of the test functions")


def _restarted_on(scene: Scene, pod: str) -> faults.Probe:
    """A probe: every sandbox of ours that ran on `pod` was restarted (its restartCount went up)
    or replaced. Their status may say Running throughout while the runtime is down; without
    this, convergence could be declared before anything noticed the fault."""
    before = {
        b["metadata"]["uid"]: (b.get("status") or {}).get("restartCount", 0)
        for b in listed(scene, "sandboxes")
        if b["spec"].get("podName") == pod
    }

    def probe() -> bool:
        now = {b["metadata"]["uid"]: b for b in listed(scene, "sandboxes")}
        return all(
            uid not in now or (now[uid].get("status") or {}).get("restartCount", 0) > count
            for uid, count in before.items()
        )

    return probe


def inject(scene: Scene, fault: str) -> faults.Injected:
    """Do `fault` to the cluster; what it did and how to tell it is over."""
    core, apps = scene.core, scene.apps
    if fault == "runtime-kill":
        pod = _pool_pod_of(scene)
        done = faults.kill_container(core, apps, pod, "runtime", "nest-runtime")
        restarted = _restarted_on(scene, pod["metadata"]["name"])
        return faults.Injected(done.detail, lambda: done.recovered() and restarted())
    if fault == "sidecar-kill":
        return faults.kill_container(core, apps, _pool_pod_of(scene), "sidecar", "nest-sidecar")
    if fault == "operator-kill":
        leader, how = faults.operator_leader(core)
        done = faults.kill_container(core, apps, leader, "operator", "nest-operator")
        return faults.Injected(f"{done.detail} (leader: {how})", done.recovered)
    if fault == "gateway-kill":
        pods = [p for p in faults.pods(core, faults.GATEWAY_SELECTOR) if faults.ready(p)]
        return faults.kill_container(core, apps, pods[0], "gateway", "nest-gateway")
    if fault == "pool-pod-delete":
        return faults.delete_pod(core, apps, _pool_pod_of(scene))
    if fault == "rollout-restart":
        return faults.rollout_restart(core, apps, scene.kubectl)
    if fault in ("apiserver-down", "etcd-down"):
        from nest_cluster.control_plane import ControlPlane

        component = "kube-apiserver" if fault == "apiserver-down" else "etcd"
        proc = ControlPlane().procs.find(component)
        if proc is None:
            raise RuntimeError(f"no {component} process of the local cluster")
        return faults.stop_component(core, apps, proc, component)
    raise ValueError(f"unknown fault {fault!r}")


@dataclass
class Row:
    fault: str
    detail: str
    requests: int
    failed: int
    failed_by_status: dict[str, int]
    failed_by_function: dict[str, int]
    failed_sent_before: int  # of `failed`: sent before the fault struck (in flight then)
    retried: int
    first_failure_s: float | None  # after injection
    last_failure_s: float | None
    converged: bool
    convergence_seconds: float | None
    sandboxes_before: int
    sandboxes_after: int
    lost: int
    duplicated: int
    orphans: int
    spread_before: dict[str, int]
    problems: list[str]
    failure_samples: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def run_fault(scene: Scene, fault: str, rollout: bool = True,
                    deadline_s: float = CONVERGENCE_DEADLINE) -> Row:  # fmt: skip
    """One fault under load: settle first, load, (rollout,) inject, wait for convergence."""
    known = frozenset(await asyncio.to_thread(_orphans_or_empty, scene))
    if not await until(lambda: settled(scene, known), time.monotonic() + deadline_s):
        problems = (
            await asyncio.to_thread(_inventory_or_none, scene) or Inventory(0, 0, 0, [], {})
        ).problems
        raise RuntimeError(f"before {fault}: the cluster did not settle: {problems}")
    before = await asyncio.to_thread(inventory, scene)
    async with Load(scene) as load:
        await asyncio.sleep(LEAD_IN)  # load before the fault: part of the measurement
        if rollout:
            await asyncio.to_thread(roll, scene, int(time.time()))
        injected_at = time.monotonic()
        injected = await asyncio.to_thread(inject, scene, fault)
        deadline = injected_at + deadline_s
        recovered = await until(injected.recovered, deadline)
        converged = recovered and await until(lambda: settled(scene, known), deadline)
        converged_at = time.monotonic()
        await asyncio.sleep(1.0)  # a second of load after convergence: late failures count too
    why = [] if converged else await asyncio.to_thread(_why_not, scene, known)
    after = await asyncio.to_thread(_inventory_or_none, scene)
    orphan_count = len(set(await asyncio.to_thread(_orphans_or_empty, scene)) - known)
    failures = [o for o in load.outcomes if o.failed]
    return Row(
        fault=fault, detail=injected.detail, requests=len(load.outcomes), failed=len(failures),
        failed_by_status=dict(Counter(o.label for o in failures)),
        failed_by_function=dict(Counter(o.function for o in failures)),
        failed_sent_before=sum(o.at < (injected.struck or injected_at) for o in failures),
        retried=sum(o.retried for o in load.outcomes),
        first_failure_s=round(min(o.at for o in failures) - injected_at, 2) if failures else None,
        last_failure_s=round(max(o.at for o in failures) - injected_at, 2) if failures else None,
        converged=converged,
        convergence_seconds=round(converged_at - injected_at, 2) if converged else None,
        sandboxes_before=before.live, sandboxes_after=after.live if after else -1,
        lost=after.lost if after else -1, duplicated=after.duplicated if after else -1,
        orphans=orphan_count, spread_before=before.spread,
        problems=(after.problems if after else ["inventory unavailable"])
        + ([] if recovered else ["the fault's effect was not undone"]) + why,
        failure_samples=sorted({f"{o.function} +{o.at - injected_at:.2f}s {o.label}: {o.body}"
                                for o in failures})[:5],
    )  # fmt: skip


def _why_not(scene: Scene, known: frozenset[int]) -> list[str]:
    """At the deadline: which checks still fail (the row says why it did not converge)."""
    try:
        found = faults.unsettled(scene.core, scene.apps)
        orphans = faults.orphans(scene.core, scene.custom, scene.node).items()
        found += [f"orphan pid {pid} of sandbox {uid}" for pid, uid in orphans if pid not in known]
        return found
    except Exception as exc:
        return [f"checks unavailable: {exc}"]


def _inventory_or_none(scene: Scene) -> Inventory | None:
    try:
        return inventory(scene)
    except Exception:
        return None


def _orphans_or_empty(scene: Scene) -> dict[int, str]:
    try:
        return faults.orphans(scene.core, scene.custom, scene.node)
    except Exception:
        return {}


def table(rows: list[Row]) -> str:
    """The human table: one line per fault. `pods` is how many pool pods each function's
    replicas were on before the fault (zero failures is asked only for 2)."""
    head = (
        f"{'fault':16} {'requests':>8} {'failed':>6}  {'by status':22} {'retried':>7} "
        f"{'converged s':>11} {'before':>6} {'after':>5} {'lost':>4} {'dup':>3} {'orphans':>7}"
        "  pods"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        by = ", ".join(f"{k}: {v}" for k, v in sorted(r.failed_by_status.items())) or "-"
        conv = f"{r.convergence_seconds:.1f}" if r.convergence_seconds is not None else "NO"
        pods = " ".join(
            f"{k.removeprefix('chaos-')}:{v}" for k, v in sorted(r.spread_before.items())
        )
        lines.append(
            f"{r.fault:16} {r.requests:>8} {r.failed:>6}  {by:22} {r.retried:>7} {conv:>11} "
            f"{r.sandboxes_before:>6} {r.sandboxes_after:>5} {r.lost:>4} {r.duplicated:>3} "
            f"{r.orphans:>7}  {pods}"
        )
    return "\n".join(lines)


class ChaosReport(Report):
    """The shared report shape, plus one row per fault and the human table."""

    def __init__(self) -> None:
        super().__init__("chaos")
        self.rows: list[Row] = []

    def as_dict(self) -> dict[str, object]:
        report = super().as_dict()
        report["faults"] = [row.as_dict() for row in self.rows]
        report["table"] = table(self.rows)
        return report


async def run() -> Report:
    from bench.cluster import BenchCluster

    chosen = [f for f in os.environ.get("NEST_CHAOS_FAULTS", ",".join(FAULTS)).split(",") if f]
    report = ChaosReport()
    with BenchCluster() as bench:
        token = await asyncio.to_thread(token_for, bench.kubectl, bench.core, bench.namespace)
        scene = Scene(bench.api, bench.kubectl, bench.namespace, token,
                      rate=float(os.environ.get("NEST_CHAOS_RATE", "10")))  # fmt: skip
        # Shared pods: wait (bounded) for other tenants' namespace-mode sandboxes to leave, so
        # our replicas can spread; the table says where they were either way.
        await until(lambda: not other_tenants(scene), time.monotonic() + 180)
        await asyncio.to_thread(deploy_functions, scene)
        for fault in chosen:
            try:
                row = await run_fault(
                    scene, fault, rollout=os.environ.get("NEST_CHAOS_ROLLOUT") != "0"
                )
            except RuntimeError as exc:  # not settled before it: say so, go on with the next
                print(f"chaos: {fault} skipped: {exc}", file=sys.stderr)
                report.results[f"{fault}.skipped"] = 1
                continue
            report.rows.append(row)
            report.results[f"{fault}.requests"] = row.requests
            report.results[f"{fault}.failed"] = row.failed
            report.results[f"{fault}.convergence_s"] = row.convergence_seconds or -1
            report.results[f"{fault}.lost"] = row.lost
            report.results[f"{fault}.duplicated"] = row.duplicated
            report.results[f"{fault}.orphans"] = row.orphans
    return report

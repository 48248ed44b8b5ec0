"""The autoscaler shell keeps its policies' state: across config changes, and after a restart.

`AutoscalerController.tick` runs on `FakeApi` with an injected clock (no pods, no gateways: every
sample is zero concurrency), so what is checked is which /scale writes the shell makes:
none downwards for a deployment that predates the controller until a full stable window is
observed; at once for one created afterwards; and the same policy object, samples and all,
after a `kubectl patch` of spec.autoscaling.
"""

from __future__ import annotations

import aiohttp

from crds import constants as c
from nest_kube import connect
from nest_kube.fake import FakeApi
from nest_kube.resources import SANDBOX_DEPLOYMENTS
from nest_operator.autoscaler_controller import AutoscalerController
from nest_operator.kube import Kube
from nest_operator.store import Kind, Obj, Store

NS = "team-a"
WRITES = ("patch", c.DEPLOYMENT_PLURAL)
SCALING = {"minReplicas": 0, "maxReplicas": 5, "stableWindowSeconds": 10,
           "panicWindowSeconds": 2, "scaleToZeroAfterSeconds": 0}  # fmt: skip


def deployment(name: str, replicas: int, **scaling: int) -> Obj:
    return {
        "metadata": {"name": name, "namespace": NS},
        "spec": {"replicas": replicas, "autoscaling": {**SCALING, **scaling}},
    }


def shell() -> tuple[AutoscalerController, FakeApi]:
    api = FakeApi()
    store = Store()
    ctl = AutoscalerController(store, Kube(connect(token="t", host="http://127.0.0.1:9"), store,
                                           api=api))  # fmt: skip
    ctl.namespace = NS
    return ctl, api


def add(ctl: AutoscalerController, api: FakeApi, obj: Obj) -> Obj:
    stored = api.put(SANDBOX_DEPLOYMENTS, obj)
    ctl.store.apply(Kind.DEPLOYMENT, "ADDED", stored)
    return stored


async def replicas(api: FakeApi, name: str) -> int:
    return int((await api.get(SANDBOX_DEPLOYMENTS, NS, name))["spec"]["replicas"])


async def ticks(ctl: AutoscalerController, api: FakeApi, start: int, end: int) -> None:
    async with aiohttp.ClientSession() as http:
        for now in range(start, end):
            await ctl.tick(http, float(now))
            for d in ctl.store.all(Kind.DEPLOYMENT):  # the watch echoing the writes
                meta = d["metadata"]
                fresh = await api.get(SANDBOX_DEPLOYMENTS, meta["namespace"], meta["name"])
                ctl.store.apply(Kind.DEPLOYMENT, "MODIFIED", fresh)


async def test_after_a_restart_an_existing_deployment_waits_a_full_window_to_go_down() -> None:
    ctl, api = shell()
    add(ctl, api, deployment("old", 3))
    ctl.begin(100.0)  # the controller (re)starts with "old" in its synced store
    await ticks(ctl, api, 100, 110)
    assert await replicas(api, "old") == 3 and api.writes[WRITES] == 0, "no decrease yet"
    assert ctl.policies[ctl.store.all(Kind.DEPLOYMENT)[0]["metadata"]["uid"]].conservative
    await ticks(ctl, api, 110, 111)  # ten seconds observed: a full stable window
    assert await replicas(api, "old") == 0 and api.writes[WRITES] == 1


async def test_a_deployment_created_after_the_start_decides_at_once() -> None:
    ctl, api = shell()
    ctl.begin(100.0)
    add(ctl, api, deployment("new", 3))
    await ticks(ctl, api, 101, 102)
    assert await replicas(api, "new") == 0, "nothing to remember: its scale is its creator's"


async def test_without_a_start_mark_nothing_is_held_either() -> None:
    ctl, api = shell()  # a shell driven by tick alone, as before begin() existed
    add(ctl, api, deployment("d", 2))
    await ticks(ctl, api, 0, 1)
    assert await replicas(api, "d") == 0


async def test_a_config_change_keeps_the_policy_and_its_samples() -> None:
    ctl, api = shell()
    stored = add(ctl, api, deployment("d", 1, minReplicas=1, scaleToZeroAfterSeconds=5))
    uid = stored["metadata"]["uid"]
    await ticks(ctl, api, 0, 4)
    policy = ctl.policies[uid]
    patched = await api.patch(
        SANDBOX_DEPLOYMENTS, NS, "d", {"spec": {"autoscaling": {"minReplicas": 0}}}
    )
    ctl.store.apply(Kind.DEPLOYMENT, "MODIFIED", patched)
    await ticks(ctl, api, 4, 5)
    assert ctl.policies[uid] is policy and policy.config.min_replicas == 0
    # Idle since t=0 (its first sample, kept): 5 s later it goes to zero. A fresh policy
    # would have counted idleness from t=4 and kept one sandbox.
    await ticks(ctl, api, 5, 6)
    assert await replicas(api, "d") == 0


async def test_policies_of_deleted_or_no_longer_autoscaled_deployments_are_dropped() -> None:
    ctl, api = shell()
    stored = add(ctl, api, deployment("d", 1, minReplicas=1))
    await ticks(ctl, api, 0, 1)
    assert set(ctl.policies) == {stored["metadata"]["uid"]}
    ctl.store.apply(Kind.DEPLOYMENT, "DELETED", stored)
    await ticks(ctl, api, 1, 2)
    assert ctl.policies == {}

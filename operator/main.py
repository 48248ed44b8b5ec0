"""The operator's entry point: kopf handlers wired to the controller manager, and nothing else.

Run it as `nest-operator` (or `nest operator run`, or `kopf run -m nest_operator.main -A`).
Every handler is a raw event handler: kopf watches and delivers, our controllers decide; kopf
keeps no progress annotations and adds no finalizers, so it costs no extra API writes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import kopf

from crds import constants as c
from nest_operator import dataplane_key
from nest_operator.kube import load_api
from nest_operator.manager import ControllerManager, Settings
from nest_operator.store import Kind
from nest_operator.webhook import WebhookServer, WebhookSettings, WebhookThread


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.peering.standalone = True
    settings.posting.enabled = False  # the controllers post their own Events
    # The webhook's thread answers the API server while the controllers' threads hold the GIL;
    # a shorter switch interval than the default 5 ms bounds how long each answer waits for it.
    sys.setswitchinterval(0.001)
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    await dataplane_key.ensure_at_startup()  # the gateway and pool pods wait for this Secret
    memo["manager"] = manager = ControllerManager(load_api(), Settings.from_env())
    hook = WebhookSettings.from_env()
    if hook.enabled:  # SandboxRestriction first: every Sandbox write waits for it
        memo["webhook"] = WebhookThread(WebhookServer(load_api(), hook, manager.store))
        await memo["webhook"].start()
    await manager.start()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if "webhook" in memo:
        await memo["webhook"].stop()
    await memo["manager"].stop()


@kopf.on.probe(id="synced")
def synced(memo: kopf.Memo, **_: Any) -> bool:
    return bool(memo["manager"].synced)


def _observer(kind: Kind) -> Any:
    async def observe(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        memo["manager"].observe(kind, event.get("type"), dict(event["object"]))

    observe.__name__ = f"observe_{kind.name.lower()}"
    return observe


kopf.on.event("", "v1", "pods", labels={c.POOL_LABEL: kopf.PRESENT}, id="observe-pods")(
    _observer(Kind.POD)
)
kopf.on.event(
    "coordination.k8s.io", "v1", "leases", labels={c.POOL_LABEL: kopf.PRESENT}, id="observe-leases"
)(_observer(Kind.LEASE))
for _kind in (Kind.SANDBOX, Kind.REPLICASET, Kind.DEPLOYMENT, Kind.ENDPOINTS, Kind.POOL):
    kopf.on.event(c.GROUP, c.VERSION, _kind.value, id=f"observe-{_kind.value}")(_observer(_kind))
# Namespace labels: which SandboxPools a namespace's sandboxes may use (namespaceSelector).
kopf.on.event("", "v1", "namespaces", id="observe-namespaces")(_observer(Kind.NAMESPACE))
# SandboxDeployments' build Jobs (source.build): their end decides status.build.
kopf.on.event("batch", "v1", "jobs", labels={c.BUILD_LABEL: kopf.PRESENT}, id="observe-jobs")(
    _observer(Kind.JOB)
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nest-operator",
        description="Nest operator: SandboxDeployments, SandboxReplicaSets, the pods-as-nodes "
        "scheduler, pod lifecycle and SandboxEndpoints. Credentials: in-cluster, else KUBECONFIG.",
    )
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                        help="kopf liveness endpoint (default %(default)s)")  # fmt: skip
    parser.add_argument("--build-image", default=os.environ.get("NEST_BUILD_IMAGE", "nest:latest"),
                        help="image of source.build Jobs, the pool's (env NEST_BUILD_IMAGE; "
                        "default %(default)s)")  # fmt: skip
    parser.add_argument("--build-deadline", type=int, metavar="SECONDS",
                        default=int(os.environ.get("NEST_BUILD_DEADLINE", "900")),
                        help="build Jobs' activeDeadlineSeconds (default %(default)s)")  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    # The manager reads its settings from the environment (Settings.from_env), flags included.
    os.environ["NEST_BUILD_IMAGE"] = args.build_image
    os.environ["NEST_BUILD_DEADLINE"] = str(args.build_deadline)
    kopf.configure(verbose=args.verbose)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    if not args.verbose:  # kopf reports every handled event at INFO: one line per watch event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(clusterwide=True, standalone=True, liveness_endpoint=args.liveness)

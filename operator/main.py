"""The operator's entry point: kopf for the process, the controller manager for the cluster.

Run it as `nest-operator` (or `nest operator run`, or `kopf run -m nest_operator.main -A`).
kopf runs what it does well here: start-up and clean-up, the liveness endpoint and its probes,
signals. It serves no resource: the manager's informers watch (one LIST per kind, not kopf's and
then ours), and kopf's per-object handlers would cost API writes the controllers do not make
(docs/operator.md has the numbers). kopf logs in with the credentials `nest_kube.connect()`
chooses, so the operator has one credentials rule for every client it makes.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import kopf

import nest_kube
from nest_operator import dataplane_key
from nest_operator.kube import load_api
from nest_operator.manager import ControllerManager, Settings
from nest_operator.webhook import WebhookServer, WebhookSettings, WebhookThread


@functools.cache
def connection() -> nest_kube.Connection:
    """This process's API server and identity, by the shared layer's one rule."""
    return nest_kube.connect()


def connection_info(conn: nest_kube.Connection) -> kopf.ConnectionInfo:
    """The same credentials as kopf wants them (token or client certificate, the same CA)."""
    cfg = conn.configuration
    authorization = conn.authorization()
    return kopf.ConnectionInfo(
        server=conn.host,
        ca_path=cfg.ssl_ca_cert or None,
        insecure=not cfg.verify_ssl,
        scheme="Bearer" if authorization else None,
        token=authorization.partition(" ")[2] if authorization else None,
        certificate_path=cfg.cert_file or None,
        private_key_path=cfg.key_file or None,
    )


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    return connection_info(connection())


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.peering.standalone = True
    settings.scanning.disabled = True  # it serves no resource: nothing to discover
    settings.posting.enabled = False  # nothing of kopf's to post: the controllers' recorder does
    # The webhook's thread answers the API server while the controllers hold the GIL; a shorter
    # switch interval than the default 5 ms bounds how long each answer waits for it.
    sys.setswitchinterval(0.001)
    await dataplane_key.ensure_at_startup()  # the gateway and pool pods wait for this Secret
    memo["manager"] = manager = ControllerManager(connection(), Settings.from_env())
    hook = WebhookSettings.from_env()
    if hook.enabled:  # SandboxRestriction first: every Sandbox write waits for it
        server = WebhookServer(load_api(connection()), hook, manager.store)
        memo["webhook"] = WebhookThread(server)
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

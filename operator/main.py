"""The operator's entry point: kopf for the process, the controller manager for the cluster.

Run it as `nest-operator` (or `nest operator run`, or `kopf run -m nest_operator.main -A`).
kopf runs what it does well here: start-up and clean-up, the liveness endpoint and its probes,
signals. It serves no resource: the manager's informers watch (one LIST per kind, not kopf's and
then ours), and kopf's per-object handlers would cost API writes the controllers do not make
(docs/operator.md has the numbers). kopf logs in with the credentials `nest_kube.connect()`
chooses, so the operator has one credentials rule for every client it makes.

High availability (docs/operator.md, "Two replicas"): every replica fills its store and serves
the webhook; only the holder of the Lease `nest-system/nest-operator` (nest_kube.leader) runs
the controllers. A replica that loses the Lease cancels its controllers at once and exits (code
1) through kopf's stop flag; its container restarts as a standby.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

import nest_kube
from crds import constants as c
from nest_kube import leader
from nest_operator import dataplane_key
from nest_operator.kube import load_api
from nest_operator.manager import ControllerManager, Settings
from nest_operator.webhook import WebhookServer, WebhookSettings, WebhookThread

log = logging.getLogger(__name__)
# kopf's stop flag: set when leadership is lost (or the election failed), so kopf runs its
# cleanup and `main` exits with LOST_EXIT. An asyncio.Event (bound to kopf's loop when first
# awaited): kopf waits for a threading.Event in an executor thread, which would then keep the
# process from exiting after any other stop (SIGTERM), the flag never being set.
STOP = asyncio.Event()
LOST_EXIT = 1
_lost: list[str] = []


@dataclass(frozen=True)
class Election:
    """Whether and how replicas elect the one that runs the controllers (--leader-elect...)."""

    enabled: bool = True
    namespace: str = "nest-system"
    name: str = c.ELECTION_LEASE
    timing: leader.Timing = field(default_factory=leader.Timing)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Election:
        base, t = cls(), leader.Timing()
        return cls(
            enabled=env.get("NEST_LEADER_ELECT", "on").lower() in ("on", "true", "1"),
            namespace=env.get("NEST_LEADER_ELECT_NAMESPACE") or env.get("POD_NAMESPACE")
            or base.namespace,
            name=env.get("NEST_LEADER_ELECT_NAME") or base.name,
            timing=leader.Timing(
                lease_duration=float(env.get("NEST_LEADER_ELECT_LEASE_DURATION", t.lease_duration)),
                renew_deadline=float(env.get("NEST_LEADER_ELECT_RENEW_DEADLINE", t.renew_deadline)),
                retry_period=float(env.get("NEST_LEADER_ELECT_RETRY_PERIOD", t.retry_period)),
            ),
        )  # fmt: skip


def lost(manager: ControllerManager, reason: str) -> None:
    """The elector's `on_stopped`: no controller takes another step, then the process exits."""
    manager.stop_leading()
    _lost.append(reason)
    STOP.set()


def _election_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:  # a bug: restart, do not linger
        log.error("leader election failed", exc_info=task.exception())
        _lost.append(f"leader election failed: {task.exception()!r}")
        STOP.set()


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
    memo["manager"] = manager = ControllerManager(connection(), memo["settings"])
    hook = WebhookSettings.from_env()
    if hook.enabled:  # SandboxRestriction first: every Sandbox write waits for it
        server = WebhookServer(load_api(connection()), hook, manager.store)
        memo["webhook"] = WebhookThread(server)
        await memo["webhook"].start()
    await manager.start_informers()  # every replica: the webhook's store, a warm standby
    election: Election = memo["election_config"]
    if not election.enabled:
        manager.lead()
        return
    # Its own client: a renewal never queues behind a burst of the controllers' requests.
    elector = leader.LeaderElector(
        nest_kube.HttpApi(connection()), election.namespace, election.name, leader.identity(),
        election.timing, on_started=manager.lead, on_stopped=functools.partial(lost, manager),
    )  # fmt: skip
    memo["elector"] = elector
    memo["election"] = task = asyncio.create_task(elector.run(), name="leader-election")
    task.add_done_callback(_election_ended)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if "election" in memo:
        memo["election"].cancel()
        await asyncio.gather(memo["election"], return_exceptions=True)
    await memo["manager"].stop()
    if "elector" in memo:  # after the controllers stopped: a standby may take over at once
        await memo["elector"].release()
        await memo["elector"].api.close()
    if "webhook" in memo:
        await memo["webhook"].stop()


@kopf.on.probe(id="synced")
def synced(memo: kopf.Memo, **_: Any) -> bool:
    return bool(memo["manager"].informed)


@kopf.on.probe(id="leader")
def leading(memo: kopf.Memo, **_: Any) -> bool:
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
    evictions = parser.add_argument_group(
        "eviction",
        "when a pool pod's stale Lease or NotReady condition evicts its sandboxes "
        "(an outage of the control plane is not the pods' death; docs/sidecar-and-operator.md)",
    )
    evictions.add_argument("--eviction-rate", type=float, metavar="PODS_PER_SECOND",
                           default=float(os.environ.get("NEST_EVICTION_RATE", "0.1")),
                           help="unhealthy pool pods whose sandboxes are evicted per second, "
                           "like --node-eviction-rate; 0: no limit (env NEST_EVICTION_RATE; "
                           "default %(default)s)")  # fmt: skip
    evictions.add_argument("--unhealthy-threshold", type=float, metavar="FRACTION",
                           default=float(os.environ.get("NEST_UNHEALTHY_THRESHOLD", "0.55")),
                           help="evict no pod for its health while at least this fraction "
                           "(and at least 3) of the pool pods, or all of them, are unhealthy at "
                           "once: a control-plane outage, like --unhealthy-zone-threshold (env "
                           "NEST_UNHEALTHY_THRESHOLD; default %(default)s)")  # fmt: skip
    evictions.add_argument("--startup-grace", type=float, metavar="SECONDS",
                           default=float(os.environ.get("NEST_STARTUP_GRACE", "50")),
                           help="after the operator starts, its watches recover or a mass "
                           "staleness ends, judge no pod by its health for this long (at least "
                           "the Lease's duration): the sidecars renew meanwhile (env "
                           "NEST_STARTUP_GRACE; default %(default)s)")  # fmt: skip
    election = parser.add_argument_group(
        "leader election",
        "replicas elect the one that runs the controllers with a coordination.k8s.io Lease, as "
        "client-go does; every replica serves the webhook (docs/operator.md)",
    )
    election.add_argument("--leader-elect", choices=("on", "off"),
                          default=os.environ.get("NEST_LEADER_ELECT", "on"),
                          help="off: run the controllers without electing (one replica only; "
                          "env NEST_LEADER_ELECT; default %(default)s)")  # fmt: skip
    t = leader.Timing()
    for flag, env, default, what in (
        ("lease-duration", "LEASE_DURATION", t.lease_duration,
         "how long a standby waits after the last renewal it saw before taking over"),
        ("renew-deadline", "RENEW_DEADLINE", t.renew_deadline,
         "how long the leader keeps leading without a successful renewal"),
        ("retry-period", "RETRY_PERIOD", t.retry_period, "between renewals and attempts"),
    ):  # fmt: skip
        election.add_argument(
            f"--leader-elect-{flag}",
            type=float,
            metavar="SECONDS",
            default=float(os.environ.get(f"NEST_LEADER_ELECT_{env}", default)),
            help=f"{what} (env NEST_LEADER_ELECT_{env}; default %(default)s)",
        )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    # The flags (whose defaults are the environment's) over what only the environment sets;
    # handed to the start-up handler in kopf's memo. Inconsistent durations fail here, now.
    settings = dataclasses.replace(
        Settings.from_env(),
        build_image=args.build_image,
        build_deadline=args.build_deadline,
        eviction_rate=args.eviction_rate,
        unhealthy_threshold=args.unhealthy_threshold,
        startup_grace=args.startup_grace,
    )
    elect = dataclasses.replace(
        Election.from_env(),
        enabled=args.leader_elect == "on",
        timing=leader.Timing(
            lease_duration=args.leader_elect_lease_duration,
            renew_deadline=args.leader_elect_renew_deadline,
            retry_period=args.leader_elect_retry_period,
        ),
    )
    kopf.configure(verbose=args.verbose)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    if not args.verbose:  # kopf reports every handled event at INFO: one line per watch event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        clusterwide=True, standalone=True, liveness_endpoint=args.liveness, stop_flag=STOP,
        memo=kopf.Memo(settings=settings, election_config=elect),
    )  # fmt: skip
    if _lost:  # not a clean stop: the Deployment restarts this container, as a standby
        log.warning("exiting: %s", _lost[0])
        sys.exit(LOST_EXIT)

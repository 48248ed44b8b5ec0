"""The runner process: argument parsing, the event loop, and an orderly shutdown on SIGTERM.

Its API side runs on one asyncio loop over the shared layer: credentials from `nest_kube.connect`
(the kubeconfig it is given, `--ca-file` overriding the CA), one `HttpApi` for the pod watch
(`manager.NodePods`, a `nest_kube.Informer`), the node heartbeat (`node.NodeAgent`) and the
calls of the pod workers, which stay threads (`kube.RunnerKube` hands their calls to the loop).
On SIGTERM it stops every container within its grace period (the whole shutdown bounded to
~25 s, inside the 30 s `nest cluster down` allows) before exiting 0. Pod files of pods that
vanished while the runner was down are removed after the first list, and so are the cgroups a
previous instance left (after its processes are swept).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from nest_cluster.runner import cgroups, process
from nest_cluster.runner.kube import RunnerKube
from nest_cluster.runner.layout import FIRST_POD_IP, Layout
from nest_cluster.runner.manager import NodePods
from nest_cluster.runner.node import NodeAgent
from nest_cluster.runner.pods import NodeContext
from nest_cluster.runner.state import BackoffPolicy
from nest_kube import HttpApi, connect

log = logging.getLogger("nest_cluster.runner")
SHUTDOWN_BUDGET = 25.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m nest_cluster.runner",
        description="The local node of `nest cluster up`: runs the pods bound to it as local"
        " processes, one loopback IP per pod.",
    )
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--state-dir", required=True, type=Path, help="pod files, volumes, logs")
    parser.add_argument("--ca-file", type=Path, help="CA of the API server (default: kubeconfig)")
    parser.add_argument("--api-server", help="URL in-cluster clients use (default: kubeconfig)")
    parser.add_argument(
        "--initial-backoff",
        type=float,
        default=BackoffPolicy.initial,
        help="first crash-loop back-off in seconds (doubles up to the cap)",
    )
    parser.add_argument("--max-backoff", type=float, default=BackoffPolicy.cap)  # fmt: skip
    parser.add_argument(
        "--first-pod-ip", default=str(FIRST_POD_IP), help="pods get loopback IPs from here up"
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace, state_dir: Path, support: cgroups.Support) -> None:
    """Register the node, run its pods until SIGTERM or SIGINT, then stop them all."""
    connection = connect(args.kubeconfig)
    if args.ca_file:
        connection.configuration.ssl_ca_cert = str(args.ca_file)
    server = urlparse(args.api_server or connection.host)
    api = HttpApi(connection)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ctx = NodeContext(
        node_name=args.node_name,
        node_dir=str(state_dir),
        api_port=server.port or 443,
        layout=Layout(state_dir, args.first_pod_ip),
        kube=RunnerKube(api, loop, connection.api_client(), timeout=api.timeout),
        backoff=BackoffPolicy(initial=args.initial_backoff, cap=args.max_backoff),
        isolate=os.geteuid() == 0,
        cgroups=support,
    )
    if not ctx.isolate:
        log.warning("not root: no namespaces; pods with volume mounts or a user cannot start")
    agent = NodeAgent(api, args.node_name)
    pods = NodePods(api, ctx)
    try:
        await agent.register()
        pods.start()
        log.info("node %s ready (state dir %s)", args.node_name, state_dir)
        await stop.wait()
        log.info("stopping: terminating all containers")
        await pods.stop(time.time() + SHUTDOWN_BUDGET - 3.0)
        await agent.shut_down()
    finally:
        await api.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s"
    )
    state_dir: Path = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    # Decision: leftovers of a previous runner are killed and restarted, not adopted (see
    # nest_cluster/runner/__init__.py).
    killed = process.sweep(str(state_dir))
    if killed:
        log.info("stopped %d process(es) left by a previous runner: %s", len(killed), killed)
    isolate = os.geteuid() == 0
    support = cgroups.discover()
    key = cgroups.node_key(args.node_name, str(state_dir))
    if isolate:
        cgroups.clean_node(support, key)
        support = cgroups.prepare(support, key)
        if support.usable:
            log.info("container cgroups: v%d under %s", support.version,
                     ", ".join(cgroups.node_dirs(support, key)))  # fmt: skip
        else:
            log.warning("%s", cgroups.message(support))
    asyncio.run(serve(args, state_dir, support))
    process.sweep(str(state_dir), grace=1.0)
    if isolate:
        cgroups.clean_node(support, key)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The runner process: argument parsing, the pod watch, and an orderly shutdown on SIGTERM.

It lists and watches the pods bound to its node (resuming on resourceVersion, relisting on 410
Gone), hands each pod to its `PodWorker`, and on SIGTERM stops every container within its grace
period (the whole shutdown bounded to ~25 s, inside the 30 s `nest cluster down` allows) before
exiting 0. Pod files of pods that vanished while the runner was down are removed at the first list,
and so are the cgroups a previous instance left (after its processes are swept).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from nest_cluster.runner import cgroups, process
from nest_cluster.runner.layout import FIRST_POD_IP, Layout
from nest_cluster.runner.node import NodeAgent
from nest_cluster.runner.pods import Event, NodeContext, PodWorker
from nest_cluster.runner.state import BackoffPolicy

log = logging.getLogger("nest_cluster.runner")
SHUTDOWN_BUDGET = 25.0
WATCH_SECONDS = 60


class PodManager:
    """Routes watch events to per-pod workers, keyed by pod uid."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()

    def _done(self, uid: str) -> None:
        with self.lock:
            self.workers.pop(uid, None)

    def apply(self, pod: Mapping[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if worker is None:
                try:
                    worker = PodWorker(self.ctx, pod, self._done)
                except Exception:
                    log.exception("pod %s: cannot be run", pod["metadata"].get("name"))
                    return
                self.workers[uid] = worker
                worker.start()
                return
        worker.post(Event("pod", pod=pod))

    def forget(self, uid: str) -> None:
        with self.lock:
            worker = self.workers.get(uid)
        if worker is not None:
            worker.post(Event("gone"))

    def sync(self, pods: list[Mapping[str, Any]]) -> None:
        """A full list: pods not in it are gone, and so are their leftover files."""
        seen = {p["metadata"]["uid"] for p in pods}
        for pod in pods:
            self.apply(pod)
        with self.lock:
            stale = [uid for uid in self.workers if uid not in seen]
        for uid in stale:
            self.forget(uid)
        for pod_dir, meta in self.ctx.layout.pods():
            if meta.uid not in seen and meta.uid not in self.workers:
                pod_dir.remove()

    def shutdown(self, deadline: float) -> None:
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.post(Event("shutdown", at=deadline))
        for worker in workers:
            worker.join(max(0.0, deadline + 2.0 - time.time()))


def watch_pods(
    manager: PodManager, core: client.CoreV1Api, node: str, stop: threading.Event
) -> None:
    selector = f"spec.nodeName={node}"
    version: str | None = None
    while not stop.is_set():
        try:
            if version is None:
                resp: Any = core.list_pod_for_all_namespaces(
                    field_selector=selector, _preload_content=False
                )
                listing = json.loads(resp.data)
                manager.sync(listing["items"])
                version = listing["metadata"]["resourceVersion"]
            stream = watch.Watch().stream(
                core.list_pod_for_all_namespaces, field_selector=selector,
                resource_version=version, timeout_seconds=WATCH_SECONDS,
                allow_watch_bookmarks=True, deserialize=False,
            )  # fmt: skip
            for event in stream:
                if stop.is_set():
                    return
                obj = event["object"]
                version = obj["metadata"].get("resourceVersion") or version
                if event["type"] in ("ADDED", "MODIFIED"):
                    manager.apply(obj)
                elif event["type"] == "DELETED":
                    manager.forget(obj["metadata"]["uid"])
        except KeyError:
            # The client's watch reads `raw_object` from ERROR events, which deserialize=False
            # does not provide; the only ERROR we expect there is 410 Gone.
            version = None
        except ApiException as err:
            if err.status == 410:
                version = None  # too old to resume: relist
                continue
            log.warning("pod watch failed (%s); retrying", err.reason)
            stop.wait(1.0)
        except Exception as err:  # connection drops while the API server restarts
            log.warning("pod watch failed (%s); retrying", err)
            stop.wait(1.0)


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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s"
    )
    api = config.new_client_from_config(config_file=str(args.kubeconfig))
    if args.ca_file:
        api.configuration.ssl_ca_cert = str(args.ca_file)
    server = urlparse(args.api_server or api.configuration.host)
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
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    core = client.CoreV1Api(api)
    ctx = NodeContext(
        node_name=args.node_name,
        node_dir=str(state_dir),
        api_port=server.port or 443,
        layout=Layout(state_dir, args.first_pod_ip),
        core=core,
        backoff=BackoffPolicy(initial=args.initial_backoff, cap=args.max_backoff),
        isolate=isolate,
        cgroups=support,
    )
    if not ctx.isolate:
        log.warning("not root: no namespaces; pods with volume mounts or a user cannot start")
    agent = NodeAgent(api, args.node_name)
    agent.register()
    manager = PodManager(ctx)
    threading.Thread(
        target=watch_pods, args=(manager, core, args.node_name, stop), daemon=True, name="watch"
    ).start()
    log.info("node %s ready (state dir %s)", args.node_name, state_dir)
    stop.wait()
    log.info("stopping: terminating all containers")
    manager.shutdown(time.time() + SHUTDOWN_BUDGET - 3.0)
    agent.shut_down()
    process.sweep(str(state_dir), grace=1.0)
    if isolate:
        cgroups.clean_node(support, key)
    return 0


if __name__ == "__main__":
    sys.exit(main())

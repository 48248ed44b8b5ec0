"""`nest get`, `nest describe` and `nest logs`: what runs, how it is doing, and what it printed.

Read-only views in the vocabulary of functions rather than of the four kinds: a function is a
SandboxDeployment, its instances are Sandboxes, its "nodes" are pool pods. Function output has no
log stream of its own — a sandbox prints into its pool pod's `runtime` container — so `nest logs`
reads those containers (from disk on the local cluster, through the API elsewhere).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from crds.constants import DEPLOYMENT_PLURAL, SANDBOX_PLURAL
from nest.cluster_cmd import local_pod_log
from nest.deploy_cmd import add_namespace
from nest.dirs import local_kubeconfig
from nest.errors import ApiError, NestError
from nest.kube import Cluster, Obj
from nest.render import (
    OUTPUTS,
    describe_function,
    dump,
    functions_table,
    now_utc,
    pods_table,
    sandboxes_table,
    with_namespace,
)

RUNTIME_CONTAINER = "runtime"
GET_EPILOG = """\
examples:
  nest get functions                       # READY is ready/desired sandboxes
  nest get functions -A                    # in every namespace
  nest get sandboxes --function hello      # phase, failure reason, pool pod, address
  nest get pods                            # pool pods and how many sandboxes each hosts
  nest get functions -o json | jq '.items[].metadata.name'
"""
DESCRIBE_EPILOG = """\
examples:
  nest describe function hello             # replicas, revisions, endpoints, recent events
"""
LOGS_EPILOG = """\
examples:
  nest logs hello                          # runtime output of the pool pods hosting hello
  nest logs hello --tail 50

Sandboxes print into their pool pod's runtime container, which other functions may share: lines
naming another function's sandbox are left out, untagged lines are shown.
"""


def register(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    get = sub.add_parser(
        "get",
        help="list functions, sandboxes or pool pods",
        description="List functions "
        "(SandboxDeployments), sandboxes or pool pods as a table, or as JSON/YAML for scripts.",
        epilog=GET_EPILOG,
        formatter_class=fmt,
    )
    get.add_argument(
        "what",
        choices=["functions", "function", "fn", "sandboxes", "sandbox", "sbx", "pods", "pod"],
        help="what to list",
    )
    get.add_argument("name", nargs="?", help="only this function (for functions)")
    get.add_argument("--function", "-f", dest="function", help="sandboxes of this function only")
    get.add_argument("-o", "--output", choices=OUTPUTS, default="table")
    get.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="functions or sandboxes of every namespace",
    )
    add_namespace(get)
    get.set_defaults(func=get_cmd)

    describe = sub.add_parser(
        "describe",
        help="a function in detail",
        description="A function in detail: settings, "
        "replicas, revisions, endpoints, sandboxes and recent events.",
        epilog=DESCRIBE_EPILOG,
        formatter_class=fmt,
    )
    describe.add_argument("kind", choices=["function", "fn"], help="what to describe")
    describe.add_argument("name", help="function name")
    add_namespace(describe)
    describe.set_defaults(func=describe_cmd)

    logs = sub.add_parser(
        "logs",
        help="output of a function's sandboxes",
        description="The runtime container "
        "logs of the pool pods hosting a function's sandboxes, each line prefixed by its pod.",
        epilog=LOGS_EPILOG,
        formatter_class=fmt,
    )
    logs.add_argument("name", help="function name")
    logs.add_argument("--tail", type=int, help="last N lines per pod")
    add_namespace(logs)
    logs.set_defaults(func=logs_cmd)


def get_cmd(args: argparse.Namespace) -> int:
    cluster = Cluster.from_args(args.namespace)
    now = now_utc()
    kind = {
        "function": "functions",
        "fn": "functions",
        "sandbox": "sandboxes",
        "sbx": "sandboxes",
        "pod": "pods",
    }.get(args.what, args.what)
    everywhere = args.all_namespaces
    if kind == "functions":
        if args.name:
            items = [cluster.function(args.name)]
        else:
            items = cluster.list(DEPLOYMENT_PLURAL, all_namespaces=everywhere)
        text = functions_table(items, now)
    elif kind == "sandboxes":
        if args.function:
            items = cluster.sandboxes_of(cluster.function(args.function))
        else:
            items = cluster.list(SANDBOX_PLURAL, all_namespaces=everywhere)
        text = sandboxes_table(items, now)
    else:
        # Pool pods are listed in every namespace: they are the cluster's "nodes".
        items, everywhere = cluster.pool_pods(), False
        text = pods_table(items, _all_sandboxes(cluster), now)
    if args.output != "table":
        sys.stdout.write(dump(items, args.output))
    elif not items:
        where = "any namespace" if everywhere else f"namespace {cluster.namespace}"
        print(f"No {kind} found in {where}.", file=sys.stderr)
    else:
        sys.stdout.write(with_namespace(text, items) if everywhere else text)
    return 0


def _all_sandboxes(cluster: Cluster) -> list[Obj]:
    """Sandboxes of every namespace when allowed (to count what pool pods host), else ours."""
    try:
        return cluster.list(SANDBOX_PLURAL, all_namespaces=True)
    except ApiError:
        return cluster.list(SANDBOX_PLURAL)


def describe_cmd(args: argparse.Namespace) -> int:
    cluster = Cluster.from_args(args.namespace)
    deployment = cluster.function(args.name)
    replicasets = cluster.replicasets_of(deployment)
    sandboxes = cluster.sandboxes_of(deployment)
    names = {args.name} | {o["metadata"]["name"] for o in replicasets + sandboxes}
    text = describe_function(
        deployment,
        replicasets,
        cluster.endpoints_of(args.name),
        sandboxes,
        cluster.events_about(names),
        now_utc(),
    )
    sys.stdout.write(text)
    return 0


def hosting_pods(sandboxes: list[Obj]) -> list[tuple[str, str]]:
    """(namespace, name) of the pool pods the sandboxes are bound to, sorted, once each."""
    return sorted(
        {
            (s["spec"]["podNamespace"], s["spec"]["podName"])
            for s in sandboxes
            if s["spec"].get("podName") and s["spec"].get("podNamespace")
        }
    )


def filter_lines(lines: list[str], others: set[str]) -> list[str]:
    """Leave out lines naming a sandbox of another function; the runtime does not tag the
    rest, so they stay (they may be this function's)."""
    return [line for line in lines if not any(name in line for name in others)]


def _read_log(cluster: Cluster, namespace: str, pod: str, tail: int | None) -> str:
    if cluster.kubeconfig.resolve() == local_kubeconfig().resolve():
        lines = local_pod_log(namespace, pod, RUNTIME_CONTAINER).splitlines(keepends=True)
        return "".join(lines[-tail:] if tail else lines)
    return cluster.pod_log(namespace, pod, RUNTIME_CONTAINER, tail)


def logs_cmd(args: argparse.Namespace) -> int:
    cluster = Cluster.from_args(args.namespace)
    deployment = cluster.function(args.name)
    own = cluster.sandboxes_of(deployment)
    pods = hosting_pods(own)
    if not pods:
        raise NestError(f"function {args.name} has no sandbox bound to a pool pod yet")
    own_names = {s["metadata"]["name"] for s in own}
    others = {s["metadata"]["name"] for s in cluster.list(SANDBOX_PLURAL)} - own_names
    for namespace, pod in pods:
        lines = _read_log(cluster, namespace, pod, args.tail).splitlines()
        for line in filter_lines(lines, others):
            print(f"[{pod}] {line}")
    return 0

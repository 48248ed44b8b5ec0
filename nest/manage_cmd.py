"""`nest scale`, `nest rollout status|undo`, `nest delete` and `nest operator run`.

The day-two verbs, with kubectl's meanings: scale writes the scale subresource (so it works
under RBAC that grants only `sandboxdeployments/scale`); rollout undo writes a previous
revision's template back as `kubectl rollout undo` does for Deployments; rollout status waits.
`nest operator run` runs the operator in the foreground against the same cluster the other
commands talk to, for development without deploying it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from crds.constants import DEPLOYMENT_PLURAL
from nest import names
from nest.deploy_cmd import add_namespace, add_wait, wait_ready
from nest.errors import InvalidFunctionError, WaitTimeoutError
from nest.kube import Cluster, kubeconfig_path

SCALE_EPILOG = """\
examples:
  nest scale hello --replicas 5
  nest scale hello --replicas 0            # stop every sandbox, keep the function
  nest scale hello --replicas 5 --wait     # and wait until 5 are ready (exit 3 on timeout)
"""
ROLLOUT_EPILOG = """\
examples:
  nest rollout status hello                # wait until the current revision is rolled out
  nest rollout undo hello                  # back to the previous revision
  nest rollout undo hello --to-revision 1

exit codes: 0 rolled out, 1 error or rollout failed, 2 usage, 3 timed out
"""
DELETE_EPILOG = """\
examples:
  nest delete hello                        # the function, its revisions and its sandboxes
  nest delete hello --wait                 # return once every sandbox is gone
"""
OPERATOR_EPILOG = """\
examples:
  nest operator run                        # NEST_KUBECONFIG, KUBECONFIG or the local cluster
  nest operator run -- --verbose           # arguments after -- go to nest-operator
"""


def register(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    scale = sub.add_parser(
        "scale",
        help="set a function's replicas",
        description="Set the desired sandboxes of a function through its scale subresource.",
        epilog=SCALE_EPILOG,
        formatter_class=fmt,
    )
    scale.add_argument("name", help="function name")
    scale.add_argument("--replicas", type=int, required=True, help="desired sandboxes (>= 0)")
    scale.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="wait until that many are ready (default: don't)",
    )
    add_wait(scale, 120.0)
    add_namespace(scale)
    scale.set_defaults(func=scale_cmd)

    rollout = sub.add_parser(
        "rollout",
        help="watch or undo a function's rollout",
        description="Rollout status and undo, as kubectl rollout for Deployments.",
        epilog=ROLLOUT_EPILOG,
        formatter_class=fmt,
    )
    verbs = rollout.add_subparsers(dest="rollout_command", required=True, metavar="COMMAND")
    status = verbs.add_parser(
        "status",
        help="wait until the rollout is complete",
        epilog=ROLLOUT_EPILOG,
        formatter_class=fmt,
    )
    status.add_argument("name", help="function name")
    add_wait(status, 300.0)
    add_namespace(status)
    status.set_defaults(func=rollout_status_cmd)
    undo = verbs.add_parser(
        "undo",
        help="roll back to the previous (or a given) revision",
        epilog=ROLLOUT_EPILOG,
        formatter_class=fmt,
    )
    undo.add_argument("name", help="function name")
    undo.add_argument("--to-revision", type=int, help="revision to return to (default: previous)")
    add_namespace(undo)
    undo.set_defaults(func=rollout_undo_cmd)

    delete = sub.add_parser(
        "delete",
        help="delete a function and its sandboxes",
        description="Delete a function; its replica sets and sandboxes go with it.",
        epilog=DELETE_EPILOG,
        formatter_class=fmt,
    )
    delete.add_argument("name", nargs="+", help="function name(s)")
    delete.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="wait until the function and its sandboxes are gone",
    )
    add_wait(delete, 120.0)
    add_namespace(delete)
    delete.set_defaults(func=delete_cmd)

    operator = sub.add_parser(
        "operator",
        help="run the Nest operator in the foreground",
        description="The Nest operator (controllers, scheduler, endpoints, autoscaler).",
        epilog=OPERATOR_EPILOG,
        formatter_class=fmt,
    )
    ops = operator.add_subparsers(dest="operator_command", required=True, metavar="COMMAND")
    run = ops.add_parser(
        "run", help="run it until interrupted", epilog=OPERATOR_EPILOG, formatter_class=fmt
    )
    run.add_argument(
        "operator_args", nargs=argparse.REMAINDER, help="arguments for nest-operator (after --)"
    )
    run.set_defaults(func=operator_run_cmd)


def scale_cmd(args: argparse.Namespace) -> int:
    if args.replicas < 0:
        raise InvalidFunctionError("--replicas must be 0 or more")
    cluster = Cluster.from_args(args.namespace)
    deployment = cluster.function(args.name)
    if deployment["spec"].get("autoscaling"):
        print(
            f"note: {args.name} is autoscaled; the autoscaler may change replicas again",
            file=sys.stderr,
        )
    cluster.scale(args.name, args.replicas)
    print(f"function {cluster.namespace}/{args.name} scaled to {args.replicas}")
    if args.wait:
        wait_ready(cluster, args.name, args.timeout)
    return 0


def rollout_status_cmd(args: argparse.Namespace) -> int:
    cluster = Cluster.from_args(args.namespace)
    wait_ready(cluster, args.name, args.timeout)
    deployment = cluster.function(args.name)
    revision = names.current_revision(deployment, cluster.replicasets_of(deployment))
    print(f'function "{args.name}" successfully rolled out (revision {revision})')
    return 0


def rollout_undo_cmd(args: argparse.Namespace) -> int:
    from nest import functions  # the models: only for the command that needs them

    cluster = Cluster.from_args(args.namespace)
    deployment = cluster.function(args.name)
    template, revision = functions.undo_template(
        deployment, cluster.replicasets_of(deployment), args.to_revision
    )
    # A replace with the read resourceVersion, so an undo never clobbers a concurrent deploy.
    cluster.replace(
        DEPLOYMENT_PLURAL, {**deployment, "spec": {**deployment["spec"], "template": template}}
    )
    print(f"function {cluster.namespace}/{args.name} rolled back to revision {revision}")
    return 0


def delete_cmd(args: argparse.Namespace) -> int:
    cluster = Cluster.from_args(args.namespace)
    for name in args.name:
        cluster.delete(DEPLOYMENT_PLURAL, name)
        print(f"function {cluster.namespace}/{name} deleted")
    if args.wait:
        deadline = time.monotonic() + args.timeout
        while any(cluster.find(DEPLOYMENT_PLURAL, n) is not None for n in args.name):
            if time.monotonic() >= deadline:
                raise WaitTimeoutError(f"still deleting after {args.timeout:g}s")
            time.sleep(1.0)  # a poll interval of the CLI
    return 0


def operator_run_cmd(args: argparse.Namespace) -> int:
    from nest_operator.main import main as operator_main

    rest = [a for a in args.operator_args if a != "--"]
    if "KUBERNETES_SERVICE_HOST" not in os.environ:
        # The operator reads $KUBECONFIG; point it where every other nest command points.
        os.environ["KUBECONFIG"] = str(kubeconfig_path(os.environ))
    operator_main(rest)
    return 0

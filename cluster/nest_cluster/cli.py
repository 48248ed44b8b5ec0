"""`nest-cluster` (also spelled `nest cluster ...`): bring the local control plane up and down,
tell its state, show logs, and run the demo.

Its own console entry because the local cluster is its own distribution (see the package
docstring): the product's `nest cluster` and `nest demo` run this command as a process.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from nest.cli import run
from nest_cluster import demo
from nest_cluster.control_plane import ControlPlane
from nest_cluster.paths import ClusterPaths
from nest_cluster.runner.logs import log_file

EPILOG = """\
examples:
  nest cluster up                      # build once (~5 min), then start in seconds
  eval "$(nest cluster env)"           # point kubectl at it
  kubectl get nodes,ns
  nest cluster logs kube-apiserver     # a component's log, or a pod's: NAMESPACE/POD[/CONTAINER]
  nest cluster down --purge            # stop everything, remove state (the build cache stays)
  nest demo                            # the cluster, Nest installed, examples deployed

`nest-cluster COMMAND` is the same as `nest cluster COMMAND`; `nest-cluster demo` is `nest demo`.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nest-cluster",
        description="A real Kubernetes control plane (etcd, kube-apiserver, "
        "kube-controller-manager, kube-scheduler) and a local node whose pods run as processes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    cmds = parser.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")

    up = cmds.add_parser("up", help="build (first time) and start; idempotent")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds per component")
    up.set_defaults(func=_up)

    down = cmds.add_parser("down", help="stop every process of the local cluster")
    down.add_argument("--purge", action="store_true", help="also delete the cluster state")
    down.set_defaults(func=_down)

    status = cmds.add_parser("status", help="what runs and whether it is healthy")
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status.set_defaults(func=_status)

    env = cmds.add_parser("env", help="print the kubeconfig path as shell exports")
    env.add_argument("--path", action="store_true", help="print only the kubeconfig path")
    env.set_defaults(func=_env)

    logs = cmds.add_parser("logs", help="a component's or a local pod's log")
    logs.add_argument("name", help="component name, or NAMESPACE/POD[/CONTAINER]")
    logs.set_defaults(func=_logs)

    demo.register(cmds)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def _up(args: argparse.Namespace) -> int:
    plane = ControlPlane()
    plane.up(timeout=args.timeout)
    print(f"export KUBECONFIG={plane.paths.kubeconfig}")
    return 0


def _down(args: argparse.Namespace) -> int:
    ControlPlane().down(purge=args.purge)
    return 0


def _status(args: argparse.Namespace) -> int:
    rows = ControlPlane().status()
    if args.output == "json":
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        print(f"{'COMPONENT':<26}{'PID':<9}{'HEALTHY':<9}{'RESTARTS':<10}DETAIL")
        for r in rows:
            ok = "yes" if r.healthy else "no"
            print(f"{r.name:<26}{r.pid or '-'!s:<9}{ok:<9}{r.restarts:<10}{r.detail}")
    return 0 if all(r.healthy for r in rows) else 1


def _env(args: argparse.Namespace) -> int:
    paths = ClusterPaths.default()
    if args.path:
        print(paths.kubeconfig)
    else:
        print(f"export KUBECONFIG={paths.kubeconfig}")
        print(f"export PATH={paths.bin_dir}:$PATH")
    return 0


def _logs(args: argparse.Namespace) -> int:
    plane = ControlPlane()
    path = (
        plane.procs.log_path(args.name)
        if "/" not in args.name
        else log_file(plane.paths.state / "node", args.name)
    )
    print(path.read_text(errors="replace"), end="")
    return 0

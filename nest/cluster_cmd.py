"""`nest cluster ...` and `nest demo`: doors to the local development cluster, which is not product.

The local cluster (a real control plane, an OCI registry and a node whose pods run as processes)
is test and demo infrastructure. It is its own distribution, nest-cluster (`cluster/` in the
source tree, installed by scripts/bootstrap), and is in neither the product wheel nor the image.
These commands keep the spelling the docs and tests use by running its console entry as a
separate process: the product never imports it, so a production install has no trace of it and
only says how to get it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nest.errors import NestError

# subprocess and importlib.util load when a door is used: the `nest` parser imports this module
# for every command (issue 14).
if TYPE_CHECKING:
    import subprocess

DEV_PACKAGE = "nest_cluster"
NOT_INSTALLED = (
    "the local cluster is development tooling and is not installed here: from a source "
    "checkout run scripts/bootstrap (or `pip install -e ./cluster`), or set NEST_KUBECONFIG "
    "to a cluster of your own"
)
# (our command, the local cluster's command prefix, help)
DOORS = (
    (
        "cluster",
        (),
        "the local Kubernetes control plane (nest-cluster: up, down, status, env, logs)",
    ),
    ("demo", ("demo",), "a local cluster running Nest, example functions deployed and invoked"),
)


def register(sub: Any) -> None:
    for name, prefix, summary in DOORS:
        # No options of our own, not even --help: every word after the command is the local
        # cluster's to parse, verbatim (nest.cli.parse hands them over as `passed`), so
        # `nest cluster --help` shows its help.
        parser = sub.add_parser(name, help=summary, add_help=False)
        parser.set_defaults(func=_delegate, prefix=prefix, passes_words=True)


def local_cluster_argv(args: Sequence[str]) -> list[str]:
    """The command line of `nest-cluster ARGS`, run by this interpreter (the venv's)."""
    return [sys.executable, "-m", DEV_PACKAGE, *args]


def run_local_cluster(
    args: Sequence[str], capture: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run `nest-cluster ARGS`; its exit code is the caller's to pass on."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec(DEV_PACKAGE) is None:
        raise NestError(NOT_INSTALLED)
    return subprocess.run(local_cluster_argv(args), capture_output=capture, text=True, check=False)


def local_pod_log(namespace: str, pod: str, container: str) -> str:
    """A container's log on the local node, which has no kubelet API: its runner keeps logs on
    disk, and `nest-cluster logs` knows where."""
    proc = run_local_cluster(["logs", f"{namespace}/{pod}/{container}"], capture=True)
    if proc.returncode != 0:
        raise NestError(proc.stderr.strip().removeprefix("nest: ") or "nest-cluster logs failed")
    return proc.stdout


def _delegate(args: argparse.Namespace) -> int:
    return run_local_cluster([*args.prefix, *args.passed]).returncode

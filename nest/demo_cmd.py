"""`nest demo`: the README's first command — a local cluster with Nest installed, shown working.

It is the path a newcomer takes, so every step says what it does and the end shows the result
through plain kubectl, the tool they already know.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import crds
from nest.cluster.control_plane import ControlPlane
from nest.errors import NestError

CRD_NAMES = [
    f"{plural}.nest.sandbox.dev"
    for plural in ("sandboxes", "sandboxreplicasets", "sandboxdeployments", "sandboxendpoints")
]


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="bring up the local cluster with Nest installed and show it",
        description="Bring up the local control plane (built on first use), install the Nest "
        "CRDs, and show them through kubectl. Uses NEST_KUBECONFIG instead when it is set.",
    )
    parser.set_defaults(func=run)


def _kubectl(plane: ControlPlane, kubeconfig: Path, *args: str) -> str:
    proc = subprocess.run(
        [plane.kubectl_path(), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise NestError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def run(args: argparse.Namespace) -> int:
    plane = ControlPlane()
    named = os.environ.get("NEST_KUBECONFIG")
    if named:
        kubeconfig = Path(named)
        _step(f"using the cluster of NEST_KUBECONFIG={named}")
    else:
        _step("bringing up the local control plane (`nest cluster up`)")
        plane.up()
        kubeconfig = plane.paths.kubeconfig
    print(_kubectl(plane, kubeconfig, "get", "nodes", "-o", "wide"), end="")

    _step("installing the Nest CRDs")
    crd_dir = Path(crds.__file__).parent
    print(_kubectl(plane, kubeconfig, "apply", "-k", str(crd_dir)), end="")
    _kubectl(plane, kubeconfig, "wait", "--for=condition=established", "--timeout=60s",
             *[f"crd/{name}" for name in CRD_NAMES])  # fmt: skip

    _step("the Nest API, as kubectl sees it")
    print(_kubectl(plane, kubeconfig, "api-resources", "--api-group=nest.sandbox.dev"), end="")
    print(_kubectl(plane, kubeconfig, "get", "sbx,sbxrs,sbxd,sbxep", "--all-namespaces"), end="")

    _step("done")
    print(f"export KUBECONFIG={kubeconfig}", file=sys.stdout)
    return 0

"""`nest demo` (`nest-cluster demo`): the README's first command — a local cluster running Nest,
functions deployed and invoked, every step shown as the command a user would type.

It is the path a newcomer takes, so it drives the same tools they will use afterwards (`kubectl`
and `nest`) and prints each command before running it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nest.errors import NestError
from nest_cluster.control_plane import ControlPlane

# The source checkout this package is installed from (cluster/nest_cluster/demo.py): the demo
# applies its deploy/ and examples/.
ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "nest-demo"
SYSTEM_DEPLOYMENTS = ("nest-operator", "nest-gateway", "nest-pool")
FUNCTIONS = (("hello", '{"name": "Nest"}'), ("greeter", '{"name": "reader"}'))
# A function package (examples/functions/packaged: requirements.txt): built, pushed to the local
# cluster's registry and deployed by digest with `nest deploy DIR`.
PACKAGED = ("packaged", '{"bytes": 20971520}')
PROBE_SANDBOX = """apiVersion: nest.sandbox.dev/v1alpha1
kind: Sandbox
metadata: {name: admission-probe, namespace: default}
spec: {function: {handler: "main:handler", source: {path: /nonexistent}}}
"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="a local cluster running Nest, example functions deployed and invoked",
        description="Bring up the local control plane (built on first use), install deploy/ "
        "(CRDs, operator, gateway, pool), deploy examples/deployments/ into namespace "
        f"{NAMESPACE} and invoke them. Uses NEST_KUBECONFIG instead when it is set.",
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per wait")
    parser.set_defaults(func=run)


class Demo:
    """Runs and echoes the demo's commands against one kubeconfig."""

    def __init__(self, kubeconfig: Path, kubectl: str, timeout: float) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "NEST_KUBECONFIG": str(kubeconfig)}
        self.kubectl = kubectl
        self.timeout = timeout

    def step(self, title: str) -> None:
        print(f"\n==> {title}", flush=True)

    def sh(self, *argv: str, show: bool = True, stdin: str | None = None) -> str:
        shown = " ".join(("kubectl" if a == self.kubectl else a) for a in argv)
        print(f"$ {shown}", flush=True)
        proc = subprocess.run(
            argv, input=stdin, env=self.env, capture_output=True, text=True,
            timeout=self.timeout + 60,
        )  # fmt: skip
        if show and proc.stdout:
            print(proc.stdout, end="" if proc.stdout.endswith("\n") else "\n", flush=True)
        if proc.returncode != 0:
            raise NestError(f"`{shown}` failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def k(self, *args: str, show: bool = True, stdin: str | None = None) -> str:
        return self.sh(self.kubectl, *args, show=show, stdin=stdin)

    def admission_ready(self) -> None:
        """Every Sandbox write passes SandboxRestriction (failurePolicy Fail), served by the
        operator: wait until a server-side dry run of one is answered."""
        print("$ kubectl create --dry-run=server -f <a Sandbox>   # until admission answers")
        probe = PROBE_SANDBOX
        deadline = time.monotonic() + self.timeout
        while True:
            proc = subprocess.run(
                [self.kubectl, "create", "--dry-run=server", "-f", "-"],
                input=probe, env=self.env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if proc.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise NestError(f"SandboxRestriction did not answer: {proc.stderr.strip()}")
            time.sleep(1)  # polling a condition, bounded by the deadline

    def nest(self, *args: str) -> str:
        return self.sh(sys.executable, "-m", "nest", *args)


def run(args: argparse.Namespace) -> int:
    plane = ControlPlane()
    named = os.environ.get("NEST_KUBECONFIG")
    started = time.monotonic()
    if named:
        kubeconfig = Path(named)
        print(f"==> using the cluster of NEST_KUBECONFIG={named}")
    else:
        print("==> bringing up the local control plane (nest cluster up)", flush=True)
        plane.up()
        kubeconfig = plane.paths.kubeconfig
    if not (ROOT / "deploy" / "kustomization.yaml").is_file():
        raise NestError(f"{ROOT / 'deploy'} not found: run `nest demo` from a source checkout")
    demo = Demo(kubeconfig, plane.kubectl_path(), args.timeout)
    wait = f"--timeout={int(args.timeout)}s"

    demo.step("installing Nest: CRDs, operator, gateway and pool")
    # The CRDs first, Established, then the rest: one `apply -k deploy` on a fresh cluster
    # refuses deploy/'s SandboxPool ("no matches for kind") while its CRD is still new.
    demo.k("apply", "-k", str(ROOT / "crds"), show=False)
    demo.k("wait", "--for=condition=established", wait, "crd", "--all", show=False)
    demo.k("apply", "-k", str(ROOT / "deploy"), show=False)
    for name in SYSTEM_DEPLOYMENTS:
        demo.k("-n", "nest-system", "rollout", "status", f"deployment/{name}", wait)
    demo.admission_ready()
    demo.k("-n", "nest-system", "get", "pods", "-o", "wide")

    demo.step(f"deploying the examples into namespace {NAMESPACE}")
    namespace = f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"
    demo.k("apply", "-f", "-", stdin=namespace)
    demo.k("-n", NAMESPACE, "apply", "-f", str(ROOT / "examples" / "deployments"))
    for name, _ in FUNCTIONS:
        demo.nest("rollout", "status", name, "-n", NAMESPACE)
    demo.step("building a function package (requirements.txt) and deploying it by digest")
    packaged = str(ROOT / "examples" / "functions" / "packaged")
    demo.nest("deploy", packaged, "--name", PACKAGED[0], "-n", NAMESPACE)

    demo.step("what Kubernetes sees")
    demo.k("-n", NAMESPACE, "get", "sbxd,sbxrs,sbx,sbxep", "-o", "wide")

    demo.step("invoking the functions through the gateway")
    for name, event in (*FUNCTIONS, PACKAGED):
        demo.nest("invoke", name, "-n", NAMESPACE, event)

    demo.step(f"done in {time.monotonic() - started:.0f}s; try next")
    print(f"export KUBECONFIG={kubeconfig}")
    print(
        f"kubectl -n {NAMESPACE} scale sbxd/hello --replicas=20 && kubectl -n {NAMESPACE} get sbx"
    )
    print(f"{sys.executable} -m nest describe function hello -n {NAMESPACE}")
    return 0

"""`nest deploy DIR --build-in-cluster`: the CLI's side of in-cluster builds, without pip here.

Why: `nest deploy DIR` builds a package with this machine's pip for the pool's tags, which needs
Python and network access to an index where the CLI runs, and refuses what only the pool's
interpreter can compile. With --build-in-cluster the directory itself is pushed to the cluster's
registry as a build context (`sandbox.context`: the same artifact the gateway's upload route
stores) and the function's source is `build: {context}`; the operator's Job (`nest-build`)
builds it in the pool image and rolls it out. Waiting then has one more stage before the
rollout: the `Built` condition (`build_readiness`), whose failure message is the build's own.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from crds import ConditionStatus, SandboxDeployment
from crds.sandbox import BuildSource
from nest.errors import NestError
from nest.functions import Readiness, gateway_call, with_source
from nest.package.tarball import context_archive
from nest_api import convert
from sandbox.context import ContextError, push_context
from sandbox.hosting import RegistryHosting, repository_for
from sandbox.layers import PackageError


def with_build(deployment: dict[str, Any], context: str, pull_secret: str | None) -> dict[str, Any]:
    """`deployment` with its template's code source replaced by the build context `context`
    (the operator builds it and rolls out the package; it also writes the native
    distributions' annotation, so a stale one from an earlier local build is dropped)."""
    build = BuildSource(context=context, pull_secret=pull_secret or None)  # checks the context
    return with_source(deployment, {"build": build.to_k8s()})


def build_readiness(deployment: dict[str, Any]) -> Readiness | None:
    """Where the in-cluster build of a `source.build` function is; None when there is no
    build to wait for (another source, or the template's context is built: the rollout
    decides). Read by the function API's `build_view`, as the gateway shows builds."""
    name = deployment["metadata"]["name"]
    parsed = gateway_call(convert.parse, SandboxDeployment, deployment, "SandboxDeployment")
    view = convert.build_view(parsed)
    if view is None or view.status == ConditionStatus.TRUE:
        return None
    message = view.message or ""
    if view.status == ConditionStatus.FALSE:
        return Readiness(False, f"{name}: build failed", f"the build of {name} failed: {message}")
    if view.reason is None:  # no build of this context has started yet
        return Readiness(False, f"{name}: {message}")
    job = f" (job {view.job})" if view.job else ""
    return Readiness(False, f"{name}: building{job}" + (f": {message}" if message else ""))


def push_directory(directory: Path, hosting: RegistryHosting, namespace: str) -> str:
    """Push `directory` as a build context to the namespace's repository; the reference pods
    (the build Job) pull it by."""
    with tempfile.TemporaryDirectory(prefix="nest-context-") as tmp:
        data = context_archive(directory, Path(tmp) / "context.tar.gz").path.read_bytes()
    try:
        ref = push_context(data, hosting.host, hosting.pull_host, repository_for(namespace))
    except ContextError as exc:
        raise NestError(f"{directory}: cannot be built in the cluster: {exc}") from exc
    except PackageError as exc:
        raise NestError(f"cannot push the build context to {hosting.host}: {exc}") from exc
    print(f"build context {ref} ({len(data)} bytes) pushed", file=sys.stderr, flush=True)
    return ref

"""`nest deploy`, `nest invoke` and `nest openapi`: from code on disk to a function answering.

Deploy is create-or-update of one SandboxDeployment and, by default, a wait that ends in an exit
code a script can trust: 0 ready, 1 failed for good (the sandboxes' reason, e.g. ImportError,
is printed), 3 timed out. A directory that declares dependencies (requirements.txt, or
pyproject.toml's [project].dependencies) is built into a function package instead of being sent
inline: layers pushed to the cluster's registry, the function's source their digest
(nest.package), or with --build-in-cluster built by the cluster (nest.package.incluster).
Invoke prefers the gateway (the path production traffic takes, with its authorisation and
scale-from-zero) and falls back to a ready sandbox's own address.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from crds.constants import DEPLOYMENT_PLURAL
from nest import names
from nest.dirs import cache_dir
from nest.errors import (
    FunctionFailedError,
    InvokeFailedError,
    NestError,
    WaitTimeoutError,
)
from nest.kube import Cluster

# The models, the package builder and the kubernetes client are imported where a command uses
# them, never here: the parser imports this module for every command, `nest invoke` included,
# and those imports cost more than the command itself (issue 14).
if TYPE_CHECKING:
    from nest.functions import DeployOptions
    from nest_api.models import FunctionCreate
    from sandbox.hosting import RegistryHosting

log = logging.getLogger("nest.invoke")
DEPLOY_EPILOG = """\
examples:
  nest deploy examples/functions/hello                 # a directory: handler main:handler
  nest deploy hello.py --replicas 3                    # a file: name hello, handler hello:handler
  nest deploy app/ --name api --isolation namespace --memory 32Mi
  nest deploy web/ --interface asgi --handler main:app   # a FastAPI/Starlette app
  nest deploy app/ --min 0 --max 10                    # autoscaled, scales to zero when idle
  nest deploy app/ --no-wait && nest rollout status app
  nest deploy api/                                     # api/requirements.txt: built and pushed
  nest deploy api/ --python-version 3.12 --platform manylinux_2_28_x86_64   # another pool's
  nest deploy api/ --build-in-cluster                  # no pip here: a Job in the cluster builds

A directory with requirements.txt (or pyproject.toml [project].dependencies) becomes a function
package: a dependency layer (pip, wheels for the pool's Python and platform) and a code layer,
pushed to the cluster's registry (--registry, $NEST_REGISTRY, else the one the cluster announces
in kube-public/local-registry-hosting, as `nest cluster up` does) and deployed by digest.
With --build-in-cluster the directory is pushed as is and the cluster builds it (a Job of the
function's namespace; `kubectl logs job/<name>-build-...` shows its progress).

exit codes: 0 ready, 1 error or failed for good (reason printed), 2 usage, 3 timed out
"""
INVOKE_EPILOG = """\
examples:
  nest invoke hello                          # event {}
  nest invoke hello '{"name": "nest"}'
  echo '{"name": "nest"}' | nest invoke hello -
  nest invoke hello '{}' --direct            # straight to a ready sandbox, bypassing the gateway

exit codes: 0 2xx answer, 1 error (not found, unreachable), 2 usage, 4 non-2xx answer (the body
is still printed on stdout, the status on stderr)
"""
OPENAPI_EPILOG = """\
examples:
  nest openapi > openapi.json       # generated from the gateway's code, no server needed
  nest openapi -o yaml
"""


def add_namespace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n", "--namespace", help="namespace (default: the kubeconfig context's, else default)"
    )


def add_wait(parser: argparse.ArgumentParser, default_timeout: float) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=default_timeout,
        help="seconds to wait for readiness (default %(default)s; then exit 3)",
    )


def register(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    deploy = sub.add_parser(
        "deploy",
        help="create or update a function from a .py file or a directory",
        description="Create or update a function (a SandboxDeployment of the same name) from a "
        f".py file or a directory (up to {names.MAX_INLINE_BYTES // 1024} KiB, sent inline; "
        "a directory with requirements.txt or pyproject.toml dependencies is built into a "
        "function package pushed to a registry), then wait until it is ready.",
        epilog=DEPLOY_EPILOG,
        formatter_class=fmt,
    )
    deploy.add_argument("path", type=Path, help="a .py file or a directory of code")
    deploy.add_argument("--name", help="function name (default: the file's or directory's stem)")
    deploy.add_argument(
        "--handler",
        help="module:function (default: <module>:handler for a file, main:handler for a directory)",
    )
    deploy.add_argument(
        "--isolation",
        choices=list(names.ISOLATIONS),
        help="subprocess (default), or namespace (trusted code)",
    )
    deploy.add_argument(
        "--interface",
        choices=list(names.INTERFACES),
        help="what the handler is: nest (default), a Lambda handler behind API Gateway "
        "(apigateway-v1: REST API, apigateway-v2: HTTP API / Function URL), or an ASGI or WSGI "
        "app (e.g. --handler app:app)",
    )
    deploy.add_argument(
        "--replicas", type=int, help="desired sandboxes (default 1; kept on update)"
    )
    deploy.add_argument(
        "--min", type=int, dest="min_replicas", help="autoscale: reserved sandboxes"
    )
    deploy.add_argument("--max", type=int, dest="max_replicas", help="autoscale: upper bound")
    deploy.add_argument("--memory", help="memory limit per sandbox, e.g. 64Mi")
    deploy.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable of the function (repeatable)",
    )
    deploy.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait until the function is ready (default: wait)",
    )
    pkg = deploy.add_argument_group("function packages (a directory with dependencies)")
    pkg.add_argument(
        "--package",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="build the directory into layers pushed to a registry (default: when it declares "
        "dependencies); --no-package sends it inline",
    )
    pkg.add_argument(
        "--registry",
        default=os.environ.get("NEST_REGISTRY"),
        metavar="HOST:PORT",
        help="registry to push to and pull from (default: $NEST_REGISTRY, else the cluster's)",
    )
    pkg.add_argument("--pull-secret", help="dockerconfigjson Secret the pool pulls with")
    pkg.add_argument(
        "--python-version",
        metavar="3.N",
        help="the pool's Python (default: this interpreter's, the local cluster's pool's)",
    )
    pkg.add_argument(
        "--platform",
        action="append",
        metavar="TAG",
        help="the pool's wheel platform, e.g. manylinux_2_28_x86_64; repeatable "
        "(default: this machine's)",
    )
    pkg.add_argument(
        "--rebuild", action="store_true", help="resolve the dependencies again (no cache)"
    )
    pkg.add_argument(
        "--build-in-cluster",
        action="store_true",
        help="push the directory as a build context and let the cluster build the package "
        "(source.build; no pip here, the pool's interpreter builds it)",
    )
    add_wait(deploy, 120.0)
    add_namespace(deploy)
    deploy.set_defaults(func=deploy_cmd)

    invoke = sub.add_parser(
        "invoke",
        help="invoke a function and print its answer",
        description="Invoke a function with a JSON event (an argument, or - for stdin) through "
        "the gateway (--gateway, NEST_GATEWAY, or the nest-gateway pod found in nest-system), "
        "else directly at a ready sandbox.",
        epilog=INVOKE_EPILOG,
        formatter_class=fmt,
    )
    invoke.add_argument("name", help="function name")
    invoke.add_argument("event", nargs="?", help="JSON event (default {}), or - to read stdin")
    route = invoke.add_mutually_exclusive_group()
    route.add_argument(
        "--gateway",
        default=os.environ.get("NEST_GATEWAY"),
        help="gateway URL (default: $NEST_GATEWAY, else found)",
    )
    route.add_argument("--direct", action="store_true", help="bypass the gateway")
    invoke.add_argument(
        "--content-type",
        default="application/json",
        help="of the event (default %(default)s; JSON is checked)",
    )
    invoke.add_argument("--request-timeout", type=float, default=60.0, help="seconds")
    add_namespace(invoke)
    invoke.set_defaults(func=invoke_cmd, late_positional="event")

    doc = sub.add_parser(
        "openapi",
        help="print the gateway's OpenAPI document (offline)",
        description="The gateway's OpenAPI 3.1 document, generated from its routes and models.",
        epilog=OPENAPI_EPILOG,
        formatter_class=fmt,
    )
    doc.add_argument("-o", "--output", choices=["json", "yaml"], default="json")
    doc.set_defaults(func=openapi_cmd)


def packaged(path: Path, wanted: bool | None) -> bool:
    """Whether `nest deploy PATH` builds a package: --package/--no-package, else a directory that
    declares dependencies (a plain directory stays inline, as before packages existed)."""
    if wanted is not None:
        return wanted
    from nest.package.requirements import find_requirements

    return path.is_dir() and find_requirements(path) is not None


def with_package(
    deployment: dict[str, Any], ref: str, pull_secret: str | None, natives: Sequence[str] = ()
) -> dict[str, Any]:
    """`deployment` with its template's code source replaced by the package `ref`; `natives`
    ("name==version", the package's compiled distributions) go on the template as an annotation
    so the scheduler knows them before placing a namespace-mode sandbox (an annotation, not a
    spec field: it is derived from the package, never written by hand, and the CRD stays as is)."""
    from crds.sandbox import OciSource
    from nest import functions

    oci = OciSource(ref=ref, pull_secret=pull_secret or None)  # the model checks the ref
    return functions.with_source(deployment, {"oci": oci.to_k8s()}, natives)


def _hosting(args: argparse.Namespace, cluster: Cluster) -> RegistryHosting:
    from nest.package.push import hosting_from_cluster
    from sandbox.hosting import RegistryHosting

    if args.registry:
        return RegistryHosting(args.registry, args.registry)
    found = hosting_from_cluster(cluster.core)
    if found is None:
        raise NestError(
            "no registry for the function package: this cluster announces none (ConfigMap "
            "kube-public/local-registry-hosting; `nest cluster up` runs one); pass --registry "
            "HOST:PORT or set NEST_REGISTRY"
        )
    return found


def build_and_push(
    args: argparse.Namespace, cluster: Cluster, name: str
) -> tuple[str, tuple[str, ...]]:
    """Build the directory's package, push it, and return the reference pods pull by digest
    with its native distributions ("name==version")."""
    from nest.package.build import Builder
    from nest.package.push import push, repository_for
    from nest.package.target import host_target, target_for

    hosting = _hosting(args, cluster)
    target = target_for(host_target(), args.python_version, args.platform)

    def say(message: str) -> None:
        print(f"package: {message}", file=sys.stderr, flush=True)

    builder = Builder(cache_dir() / "packages", say, rebuild=args.rebuild)
    package = builder.build(args.path, target)
    ref = push(package, hosting, repository_for(cluster.namespace), name, say)
    return ref, package.natives


def _options(args: argparse.Namespace) -> DeployOptions:
    from nest import functions

    return functions.DeployOptions(
        name=args.name,
        handler=args.handler,
        isolation=args.isolation,
        interface=args.interface,
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        memory=args.memory,
        env=functions.parse_env(args.env),
    )


def _apply(
    args: argparse.Namespace,
    cluster: Cluster,
    request: FunctionCreate,
    finish: Callable[[dict[str, Any]], dict[str, Any]] = lambda body: body,
    note: str = "",
) -> int:
    """Create or update the SandboxDeployment (`finish` edits the body first), then wait."""
    from nest import functions

    stored = cluster.find(DEPLOYMENT_PLURAL, request.name)
    if stored is None:
        cluster.create(DEPLOYMENT_PLURAL, finish(functions.manifest(cluster.namespace, request)))
        print(f"function {cluster.namespace}/{request.name} created{note}", file=sys.stderr)
    else:
        # A replace carrying the read resourceVersion: a concurrent change fails loudly (409).
        cluster.replace(DEPLOYMENT_PLURAL, finish(functions.updated(stored, request)))
        print(f"function {cluster.namespace}/{request.name} updated{note}", file=sys.stderr)
    if args.wait:
        wait_ready(cluster, request.name, args.timeout)
    return 0


def deploy_cmd(args: argparse.Namespace) -> int:
    from nest import functions

    if args.build_in_cluster or packaged(args.path, args.package):
        return deploy_package(args)
    request = functions.function_request(functions.read_code(args.path), _options(args))
    return _apply(args, Cluster.from_args(args.namespace), request)


def deploy_package(args: argparse.Namespace) -> int:
    """`nest deploy DIR` for a package: build (here, or in the cluster), push, then the same
    create-or-update and wait."""
    from nest import functions
    from nest.package import incluster

    if not args.path.is_dir():
        flag = "--build-in-cluster" if args.build_in_cluster else "--package"
        raise NestError(f"{args.path}: {flag} needs a directory")
    # The request is built as for inline code, whose stand-in file is then replaced by the
    # package: the gateway's conversions (labels, autoscaling, updates) stay the one path.
    stand_in = functions.Code(
        files={"main.py": ""},
        default_name=functions.default_name(args.path),
        default_handler=functions.default_handler(args.path),
    )
    request = functions.function_request(stand_in, _options(args))
    cluster = Cluster.from_args(args.namespace)
    if args.build_in_cluster:
        context = incluster.push_directory(args.path, _hosting(args, cluster), cluster.namespace)

        def build(body: dict[str, Any]) -> dict[str, Any]:
            return incluster.with_build(body, context, args.pull_secret)

        return _apply(args, cluster, request, build, " (built in the cluster)")
    ref, natives = build_and_push(args, cluster, request.name)

    def finish(body: dict[str, Any]) -> dict[str, Any]:
        return with_package(body, ref, args.pull_secret, natives)

    return _apply(args, cluster, request, finish, f" ({ref})")


def wait_ready(cluster: Cluster, name: str, timeout: float) -> None:
    """Poll until the function is ready, printing each new progress line on stderr.

    Raises FunctionFailedError when its sandboxes fail for good and WaitTimeoutError (exit 3)
    at the deadline, both naming the last state seen.
    """
    from nest import functions
    from nest.package import incluster

    deadline = time.monotonic() + timeout
    last = ""
    while True:
        deployment = cluster.function(name)
        verdict = incluster.build_readiness(deployment) or functions.readiness(
            deployment, cluster.replicasets_of(deployment), cluster.sandboxes_of(deployment)
        )
        if verdict.progress != last:
            print(verdict.progress, file=sys.stderr, flush=True)
            last = verdict.progress
        if verdict.ready:
            return
        if verdict.failure:
            raise FunctionFailedError(verdict.failure)
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(f"{name} not ready after {timeout:g}s ({last})")
        time.sleep(1.0)  # a poll interval of the CLI, not a test synchronisation


def event_body(event: str | None, content_type: str, stdin: Any) -> bytes:
    """The request body: the argument, or stdin for `-`; JSON is checked before sending."""
    raw = stdin.buffer.read() if event == "-" else (event or "{}").encode()
    if content_type.split(";")[0].strip() == "application/json":
        try:
            json.loads(raw or b"null")
        except ValueError as exc:
            raise NestError(
                f"the event is not JSON ({exc}); pass --content-type for other data"
            ) from exc
    return bytes(raw)


def invoke_urls(cluster: Cluster, name: str, gateway: str | None, direct: bool) -> list[str]:
    """Where to POST, in order: the gateway's invoke route, else each ready sandbox's."""
    base = None if direct else (gateway or cluster.gateway_url())
    if base and (gateway or cluster.bearer_token()):
        path = f"/v1/namespaces/{quote(cluster.namespace)}/functions/{quote(name)}:invoke"
        return [base.rstrip("/") + path]
    cluster.function(name)  # "not found" names the function, not its endpoints
    endpoints = cluster.endpoints_of(name) or {}
    ready = [
        a
        for a in (endpoints.get("status") or {}).get("ready") or []
        if a.get("podIP") and a.get("port") and a.get("uid")
    ]
    if not ready:
        raise NestError(
            f"function {name} has no ready sandbox to invoke directly (scaled to zero or still "
            f"starting: the gateway would activate it; see `nest describe function {name}`)"
        )
    random.shuffle(ready)  # spread direct calls; the gateway balances by load instead
    return [f"http://{a['podIP']}:{a['port']}/v1/sandboxes/{a['uid']}/invoke" for a in ready]


Signer = Callable[[str, bytes], Mapping[str, str]]


def dataplane_signer(cluster: Cluster) -> Signer:
    """Signs a direct call to a runtime, which answers only signed requests: with the key in
    Secret nest-system/nest-dataplane-key, which the caller must be allowed to read."""
    from sandbox import dataplane_auth

    try:
        data = cluster.secret_data("nest-system", dataplane_auth.SECRET_NAME)
        keys = dataplane_auth.from_secret_data(data)
    except Exception as exc:  # NestError (403, 404) or a malformed key
        raise NestError(
            f"invoking a sandbox directly needs the data-plane key (Secret nest-system/"
            f"{dataplane_auth.SECRET_NAME}), which cannot be read: {getattr(exc, 'reason', exc)}; "
            "invoke through the gateway instead"
        ) from exc

    def sign(url: str, body: bytes) -> Mapping[str, str]:
        parts = urlsplit(url)
        return keys.headers("POST", parts.path + (f"?{parts.query}" if parts.query else ""), body)

    return sign


def post(
    urls: list[str], body: bytes, headers: dict[str, str], timeout: float,
    sign: Signer | None = None,
) -> tuple[int, bytes]:  # fmt: skip
    """POST to the first address that accepts a connection; (status, body) of its answer."""
    import urllib.error
    import urllib.request

    failures = []
    for url in urls:
        log.debug("POST %s", url)
        sent = {**headers, **sign(url, body)} if sign is not None else headers
        request = urllib.request.Request(url, data=body, headers=sent, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())
        except (urllib.error.URLError, OSError) as exc:
            # Endpoints lag a sandbox that just went away: the next ready one may answer.
            failures.append(f"{url}: {getattr(exc, 'reason', exc)}")
    raise NestError("cannot reach the function: " + "; ".join(failures))


def invoke_cmd(args: argparse.Namespace) -> int:
    body = event_body(args.event, args.content_type, sys.stdin)
    cluster = Cluster.from_args(args.namespace)
    urls = invoke_urls(cluster, args.name, args.gateway, args.direct)
    via_gateway = "/functions/" in urls[0]
    headers = {"Content-Type": args.content_type}
    token = cluster.bearer_token()
    if via_gateway and token:
        headers["Authorization"] = f"Bearer {token}"
    log.debug("invoking %s through %s", args.name, "the gateway" if via_gateway else "a sandbox")
    sign = None if via_gateway else dataplane_signer(cluster)
    status, answer = post(urls, body, headers, args.request_timeout, sign)
    sys.stdout.buffer.write(answer if answer.endswith(b"\n") or not answer else answer + b"\n")
    sys.stdout.flush()
    if not 200 <= status < 300:
        if status == 404 and via_gateway:
            cluster.function(args.name)  # raise NotFoundError when the function is gone
        raise InvokeFailedError(f"{args.name} answered HTTP {status}")
    return 0


def openapi_cmd(args: argparse.Namespace) -> int:
    from gateway import openapi

    doc = openapi.document()
    if args.output == "yaml":
        from nest.render import dump

        sys.stdout.write(dump(doc, "yaml"))
    else:
        sys.stdout.write(openapi.render(doc))
    return 0

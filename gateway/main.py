"""`nest-gateway`: run the gateway, or generate/check its OpenAPI document.

    nest-gateway [--host H] [--port P] [--no-auth] ...   serve (in a pod: $POD_IP:8090)
    nest-gateway openapi [--write | --check] [--file F]   the document from the code

Configuration comes from flags with environment fallbacks (NEST_GATEWAY_*), because in a pod the
downward API and env are the natural inputs. Kubernetes credentials: --kubeconfig, else
$KUBECONFIG, else the pod's service account. Authentication is on unless --no-auth (local
development only; deploy/ never sets it). Requests to the runtimes are signed with the data-plane
key (--dataplane-key-file, the mounted nest-dataplane-key Secret); without one the gateway does
not start unless --insecure-dataplane says that its runtimes take unsigned requests.

The event loop is uvloop's when it is importable (--event-loop auto, the default): every
invocation is two HTTP exchanges on one loop (caller in, runtime out), and a profile of the
gateway under load spends most of its own time in the loop and its transports, which uvloop runs
in C. `--event-loop asyncio` (env NEST_GATEWAY_EVENT_LOOP) keeps the standard one, e.g. to rule
uvloop out while chasing a bug; `uvloop` insists on it (no uvloop: the gateway does not start).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from aiohttp import web

from gateway import openapi
from gateway.app import Options, create_app
from gateway.auth_policy import DEFAULT_STALE_SECONDS, OutagePolicy
from gateway.contexts import RegistrySettings
from nest_kube import Api, ConfigError, HttpApi, connect
from sandbox import dataplane_auth, limits

EPILOG = """\
environment: NEST_GATEWAY_HOST (or POD_IP), NEST_GATEWAY_PORT, NEST_GATEWAY_AUTH=off,
             NEST_GATEWAY_QUEUE_SIZE, NEST_GATEWAY_ACTIVATION_TIMEOUT, KUBECONFIG,
             NEST_GATEWAY_AUTH_STALE_SECONDS, NEST_GATEWAY_AUTH_AUDIENCES (comma-separated),
             NEST_GATEWAY_LOCAL_JWT=off,
             NEST_DATAPLANE_KEY_FILE, NEST_DATAPLANE_INSECURE=1,
             NEST_MAX_BODY_BYTES, NEST_MAX_JSON_DEPTH (the runtime reads the same two),
             NEST_GATEWAY_EVENT_LOOP (auto|uvloop|asyncio),
             NEST_GATEWAY_REGISTRY, NEST_GATEWAY_REGISTRY_PULL_HOST,
             NEST_GATEWAY_REGISTRY_CREDENTIALS (build contexts; default: the registry the
             cluster announces in kube-public/local-registry-hosting)
examples:
  nest-gateway --no-auth --insecure-dataplane --port 8090   # local development
  nest-gateway openapi > openapi.json       # print the document
  nest-gateway openapi --check              # exit 1 when gateway/openapi.json is stale
"""


LOOPS = ("auto", "uvloop", "asyncio")


def event_loop(choice: str) -> asyncio.AbstractEventLoop | None:
    """The loop to serve on: uvloop's for `uvloop`, and for `auto` when it is importable; None
    (aiohttp makes the standard one) for `asyncio`. Raises ImportError for `uvloop` without it."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop()


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nest-gateway",
        description="Nest's gateway: function management (OpenAPI) and invocation routing.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    host = env.get("NEST_GATEWAY_HOST") or env.get("POD_IP") or "127.0.0.1"
    parser.add_argument("--host", default=host, help=f"listen address (default {host})")
    parser.add_argument(
        "--port", type=int, default=int(env.get("NEST_GATEWAY_PORT", "8090")), help="listen port"
    )
    parser.add_argument("--kubeconfig", default=env.get("KUBECONFIG"), help="kubeconfig file")
    parser.add_argument(
        "--no-auth",
        action="store_true",
        default=env.get("NEST_GATEWAY_AUTH", "").lower() == "off",
        help="skip TokenReview/SubjectAccessReview (local development only)",
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=int(env.get("NEST_GATEWAY_QUEUE_SIZE", "100")),
        help="requests held per function while it scales from zero (more: 503)",
    )
    parser.add_argument(
        "--activation-timeout",
        type=float,
        default=float(env.get("NEST_GATEWAY_ACTIVATION_TIMEOUT", "30")),
        help="seconds a held request waits for a ready sandbox (then: 504)",
    )
    parser.add_argument(
        "--auth-cache-seconds",
        type=float,
        default=10.0,
        help="how long a TokenReview/SubjectAccessReview 'yes' is used without asking again",
    )
    parser.add_argument(
        "--auth-stale-seconds",
        type=float,
        default=float(env.get("NEST_GATEWAY_AUTH_STALE_SECONDS", str(DEFAULT_STALE_SECONDS))),
        help="while the API server cannot answer (down, timing out, 5xx): how much longer, "
        "beyond --auth-cache-seconds, a 'yes' it gave still counts (default %(default)gs; 0: "
        "none); callers it never allowed get 503 + Retry-After during an outage",
    )
    parser.add_argument(
        "--auth-audience",
        action="append",
        metavar="AUD",
        default=None,  # then NEST_GATEWAY_AUTH_AUDIENCES (flags replace it, never add to it)
        help="an audience ServiceAccount tokens verified locally during an outage may carry "
        "(repeatable; default: the issuer, the API server's default --api-audiences)",
    )
    parser.add_argument(
        "--no-local-jwt",
        action="store_true",
        default=env.get("NEST_GATEWAY_LOCAL_JWT", "").lower() == "off",
        help="during an outage, do not verify ServiceAccount JWTs against the issuer keys the "
        "API server publishes (/openid/v1/jwks); only callers reviewed before are served",
    )
    parser.add_argument(
        "--dataplane-key-file",
        default=env.get(dataplane_auth.ENV_KEY_FILE) or None,
        help="the data-plane signing key, a file or a Secret volume directory",
    )
    parser.add_argument(
        "--insecure-dataplane",
        action="store_true",
        default=env.get("NEST_DATAPLANE_INSECURE", "") == "1",
        help="forward requests unsigned (only runtimes run with --insecure-dataplane take them)",
    )
    parser.add_argument(
        "--event-loop",
        choices=LOOPS,
        default=env.get("NEST_GATEWAY_EVENT_LOOP") or "auto",
        help="uvloop (when importable: auto, the default) or the standard asyncio loop",
    )
    limits.add_flags(parser, env)  # the same flags as the runtime's: their limits must agree
    registry = parser.add_argument_group("build contexts (POST .../contexts)")
    registry.add_argument(
        "--registry",
        metavar="HOST[:PORT]",
        default=env.get("NEST_GATEWAY_REGISTRY") or None,
        help="registry to store uploaded build contexts in, as the gateway reaches it "
        "(default: the cluster's, kube-public/local-registry-hosting)",
    )
    registry.add_argument(
        "--registry-pull-host",
        metavar="HOST[:PORT]",
        default=env.get("NEST_GATEWAY_REGISTRY_PULL_HOST") or None,
        help="the same registry as pods reach it, the name written into references "
        "(default: --registry's, or the announced hostFromClusterNetwork)",
    )
    registry.add_argument(
        "--registry-credentials",
        metavar="FILE",
        default=env.get("NEST_GATEWAY_REGISTRY_CREDENTIALS") or None,
        help="a Docker config.json (or a dockerconfigjson Secret volume) with the registry's "
        "credentials (default: anonymous)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    doc = sub.add_parser(
        "openapi",
        help="print, write or check the OpenAPI document",
        description="The OpenAPI 3.1 document generated from the routes and pydantic models.",
    )
    mode = doc.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write it to --file")
    mode.add_argument("--check", action="store_true", help="exit 1 when --file differs")
    doc.add_argument(
        "--file", type=Path, default=None, help="default: openapi.json in the gateway package"
    )
    return parser


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _api(kubeconfig: str | None) -> Api:
    """The kubeconfig named, else the pod's service account (`nest_kube.connect`'s rule)."""
    return HttpApi(connect(kubeconfig))


def run_openapi(args: argparse.Namespace) -> int:
    if args.write:
        print(openapi.write(args.file))
        return 0
    if args.check:
        problems = openapi.check(args.file)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("nest-gateway: run `nest-gateway openapi --write`", file=sys.stderr)
            return 1
        print("OpenAPI document matches the code")
        return 0
    sys.stdout.write(openapi.render(openapi.document()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(os.environ).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "openapi":
        return run_openapi(args)
    if not args.dataplane_key_file and not args.insecure_dataplane:
        env = dataplane_auth.ENV_KEY_FILE
        print(f"nest-gateway: no data-plane key: pass --dataplane-key-file (env {env}) "
              "or --insecure-dataplane", file=sys.stderr)  # fmt: skip
        return 2
    if args.dataplane_key_file is None:
        logging.getLogger("nest.gateway").warning(
            "INSECURE DATA PLANE (--insecure-dataplane): requests to runtimes are not signed"
        )
    options = Options(
        auth=not args.no_auth,
        queue_size=args.queue_size,
        activation_timeout=args.activation_timeout,
        auth_cache_seconds=args.auth_cache_seconds,
        auth_outage=OutagePolicy(
            stale_seconds=args.auth_stale_seconds,
            local_jwt=not args.no_local_jwt,
            audiences=tuple(args.auth_audience or _env_list("NEST_GATEWAY_AUTH_AUDIENCES")),
        ),
        dataplane_key_file=args.dataplane_key_file,
        limits=limits.from_args(args),
        registry=RegistrySettings(
            args.registry, args.registry_pull_host, args.registry_credentials
        ),
    )
    try:
        app = create_app(_api(args.kubeconfig), options)
    except (ConfigError, dataplane_auth.DataplaneKeyError) as exc:
        print(f"nest-gateway: {exc}", file=sys.stderr)
        return 1
    try:
        loop = event_loop(args.event_loop)
    except ImportError:
        print("nest-gateway: --event-loop uvloop, but uvloop is not installed", file=sys.stderr)
        return 1
    logging.getLogger("nest.gateway").info(
        "listening on %s:%d (auth %s, %s event loop)", args.host, args.port,
        "on" if options.auth else "off", "asyncio" if loop is None else "uvloop",
    )  # fmt: skip
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, loop=loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())

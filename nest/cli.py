"""The `nest` command: one parser, with each command group registered by the module that owns it.

Every command returns a process exit code; errors of type `NestError` are reported as one line on
stderr with exit code 1 rather than a traceback, because scripts and people read them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from nest import cluster_cmd, crds_cmd, deploy_cmd, inspect_cmd, manage_cmd
from nest.errors import NestError

EPILOG = """\
examples:
  nest demo                  # local cluster + Nest installed, shown through kubectl
  nest cluster up            # a real local control plane (etcd, apiserver, controllers, node)
  nest crds generate         # write crds/*.yaml from the pydantic models
  nest crds check            # fail when crds/*.yaml and the models differ
  nest deploy examples/functions/hello --isolation namespace   # deploy and wait until ready
  nest invoke hello '{"name": "nest"}'                         # through the gateway
  nest get functions         # also: nest get sandboxes | pods, -o json|yaml
  nest describe function hello
  nest logs hello
  nest scale hello --replicas 3
  nest rollout status hello  # or: nest rollout undo hello [--to-revision N]
  nest delete hello
  nest openapi               # the gateway's OpenAPI document, offline
  nest operator run          # the operator in the foreground

exit codes: 0 success, 1 error, 2 usage, 3 timed out waiting, 4 the function answered non-2xx
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nest",
        description="Nest: high-density sandboxes on Kubernetes, with pods treated as nodes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cluster_cmd.register(sub)
    crds_cmd.register(sub)
    deploy_cmd.register(sub)
    inspect_cmd.register(sub)
    manage_cmd.register(sub)
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, letting a command's optional last positional come after its options.

    argparse fills `nest invoke NAME [EVENT]` before it reads `-n NS`, so in
    `nest invoke hello -n ns '{}'` the event would be "unrecognized"; a command names such a
    positional with `set_defaults(late_positional=...)` and gets the one leftover word. A command
    that runs another program says `set_defaults(passes_words=True)` and gets all its words.
    """
    args, extras = parser.parse_known_args(argv)
    if getattr(args, "passes_words", False):
        # A door to another program (nest.cluster_cmd): the words after the command are its.
        # Top-level options are flags, so the command's first occurrence is the command.
        words = list(sys.argv[1:] if argv is None else argv)
        args.passed = words[words.index(args.command) + 1 :]
        return args
    late = getattr(args, "late_positional", None)
    if (
        late
        and getattr(args, late) is None
        and len(extras) == 1
        and (extras[0] == "-" or not extras[0].startswith("-"))
    ):
        setattr(args, late, extras[0])
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse(build_parser(), argv))


def run(args: argparse.Namespace) -> int:
    """Run a parsed command (`args.func`, `args.verbose`) the way every nest command runs: its
    log lines timestamped, a NestError one line on stderr with its exit code, ^C 130. Shared
    with `nest-cluster`, whose commands `nest cluster` also runs."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except NestError as exc:
        print(f"nest: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code

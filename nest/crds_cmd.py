"""`nest crds generate|check`: keep crds/*.yaml in step with the pydantic models.

`generate` is what a developer runs after changing a model; `check` is what CI and the test
suite run so that a model change without regenerated YAML (or a hand edit of the YAML) fails
instead of installing a CRD that disagrees with the code reading its objects.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nest.errors import NestError

# crds.generate (the models, pydantic, yaml) is imported by the two commands that use it: the
# `nest` parser imports this module for every command (issue 14).


class CrdsError(NestError):
    """The CRDs could not be generated or read."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `crds` command group to the `nest` parser's subcommands."""
    crds = sub.add_parser(
        "crds",
        help="generate or check the CRD YAML from the API models",
        description="The CRDs in crds/*.yaml are generated from the pydantic models in crds/.",
    )
    commands = crds.add_subparsers(dest="crds_command", required=True, metavar="COMMAND")
    gen = commands.add_parser(
        "generate",
        help="write crds/<plural>.yaml from the models",
        description="Write one CustomResourceDefinition per kind to DIR/<plural>.yaml.",
    )
    _add_dir(gen)
    gen.set_defaults(func=run_generate)
    chk = commands.add_parser(
        "check",
        help="exit 1 when the YAML and the models differ",
        description="Compare DIR/<plural>.yaml with the models; exit 1 and list what differs.",
    )
    _add_dir(chk)
    chk.set_defaults(func=run_check)


def _add_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory of the YAML files (default: the installed crds package)",
    )


def run_generate(args: argparse.Namespace) -> int:
    """Write the YAML; prints each path written."""
    from crds import generate
    from crds.errors import CrdError

    try:
        paths = generate.write(args.dir)
    except (CrdError, OSError) as exc:
        raise CrdsError(f"cannot generate the CRDs: {exc}") from exc
    for path in paths:
        print(path)
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Exit 0 when the YAML matches the models, 1 (listing the differences) otherwise."""
    from crds import generate
    from crds.errors import CrdError

    try:
        problems = generate.check(args.dir)
    except CrdError as exc:
        raise CrdsError(f"cannot check the CRDs: {exc}") from exc
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        print("nest: the CRDs are out of date; run `nest crds generate`", file=sys.stderr)
        return 1
    print("CRDs match the models")
    return 0

"""`nest-build`: the command of the in-cluster build Job (issue 11: builds without local Python).

A platform uploads a function's directory to the gateway, which stores it as a build context
(`sandbox.context`) and creates the function with `source.build.context`; the operator runs a
Job whose one container runs

    nest-build --context REF [--tag TAG] [--result PATH]

in the pool image. It pulls the context by digest, builds it with the very builder `nest deploy
DIR` uses (`nest.package.build.Builder`) for this interpreter and platform (`host_target()`: the
Job runs the pool's image, so this ABI is the pool's), and pushes the package to the registry
and repository the context came from. Progress lines go to stdout (the pod's log: `kubectl logs
job/<name>`).

The Job has no API rights and no service-account token, so its answer is its termination
message (Tekton's mechanism for step results), written to `--result` (default
/dev/termination-log, which the kubelet turns into the container status' `message`):
- success, exit 0: one line of JSON, `{"ref": "<registry>/<repo>@sha256:…", "natives": [...]}`;
- failure, exit 1: the human message, plain text whose first line names the cause (the
  operator copies it into the `Built` condition).
Both fit the kubelet's limit of 4096 bytes (`fit_message` keeps the first line and the tail,
where pip says what failed). Registry credentials come from $DOCKER_CONFIG (the pull secret's
volume), as Docker, Kaniko and buildah read them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nest.errors import NestError
from nest.package.build import Builder
from nest.package.push import push
from nest.package.target import host_target
from sandbox.context import pull_context
from sandbox.hosting import RegistryHosting, docker_config_credentials
from sandbox.layers import PackageError, Reference

DEFAULT_RESULT = "/dev/termination-log"
MAX_RESULT_BYTES = 4096  # the kubelet's limit on a termination message
ELLIPSIS = "\n[…]\n"
Say = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    ref: str
    natives: tuple[str, ...]  # "name==version" of the package's compiled distributions

    def to_json(self) -> str:
        return json.dumps({"ref": self.ref, "natives": list(self.natives)}, separators=(",", ":"))


def fit_message(text: str, limit: int = MAX_RESULT_BYTES) -> str:
    """`text` within `limit` UTF-8 bytes: whole when it fits, else its first line (the cause)
    and as much of its end (pip's last lines say what failed) as fits between."""
    text = text.strip() or "the build failed without a message"
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    first, _, rest = text.partition("\n")
    head = first.encode("utf-8", "replace")[: limit // 2]
    room = limit - len(head) - len(ELLIPSIS.encode())
    tail = rest.encode("utf-8", "replace")[-room:] if room > 0 else b""
    return (head.decode("utf-8", "ignore") + ELLIPSIS + tail.decode("utf-8", "ignore")).rstrip()


def build(context: str, tag: str | None, say: Say, work: Path) -> BuildResult:
    """Pull, build and push; raises NestError (the build's own failures) or PackageError."""
    ref = Reference.parse(context)
    # The Job reaches the registry as pods do: the name in the context's reference.
    hosting = RegistryHosting(ref.registry, ref.registry)
    credentials = docker_config_credentials(ref.registry)
    say(f"pulling context {context}")
    source = work / "context"
    files = pull_context(context, source, credentials)
    say(f"context unpacked: {files} files")
    target = host_target()
    say(f"building for {target.describe()} (this interpreter: the pool's)")
    package = Builder(work / "cache", say).build(source, target)
    built = push(package, hosting, ref.repository, tag, say, credentials)
    natives = package.natives
    return BuildResult(built, natives)


def write_result(path: Path, text: str) -> None:
    """Write the termination message (a file the kubelet reads when the container ends)."""
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nest-build",
        description="Build a function package from a build context in the registry and push "
        "it (the in-cluster build Job's command). The result goes to --result: JSON "
        '{"ref", "natives"} on success (exit 0), the reason on failure (exit 1).',
    )
    parser.add_argument(
        "--context", required=True, metavar="REF", help="registry/repository@sha256:<digest>"
    )
    parser.add_argument("--tag", help="also tag the package (e.g. the function's name)")
    parser.add_argument(
        "--result",
        type=Path,
        default=Path(DEFAULT_RESULT),
        help="where the termination message goes (default %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def say(message: str) -> None:
        print(message, flush=True)

    try:
        with tempfile.TemporaryDirectory(prefix="nest-build-") as work:
            result = build(args.context, args.tag, say, Path(work))
        text, code = result.to_json(), 0
        say(f"built {result.ref}")
    except (NestError, PackageError) as exc:
        text, code = str(exc), 1
    except Exception as exc:  # a bug or the machine (a full /tmp): still a message, not a trace
        traceback.print_exc(file=sys.stdout)
        text, code = f"the build failed unexpectedly: {type(exc).__name__}: {exc}", 1
    if code:
        text = fit_message(text)
        say(f"build failed: {text}")
    try:
        write_result(args.result, text)
    except OSError as exc:
        print(f"nest-build: cannot write the result to {args.result}: {exc}", flush=True)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())

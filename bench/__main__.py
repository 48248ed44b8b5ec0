"""`python -m bench NAME [--json]`: run one benchmark and print its report."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from types import ModuleType

NAMES = (
    "hotplug", "memory", "density", "invoke", "hotplug-e2e", "schedule", "schedule-churn", "e2e",
    "coldstart", "coldstart-layer", "gateway", "isolation-cost", "chaos", "cli",
    "versus-pods", "report", "scale",
)  # fmt: skip


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"bench.{name.replace('-', '_')}")


def bench_help(name: str) -> str:
    """`python -m bench NAME --help`: what the bench measures, how, and its knobs (its module's
    docstring), imported only when asked: some benches import a lot."""
    doc = (_module(name).__doc__ or "").strip()
    return f"usage: python -m bench {name} [--json]\n\n{doc}\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    named = [arg for arg in argv if arg in NAMES]
    if named and any(arg in ("-h", "--help") for arg in argv):
        print(bench_help(named[0]), end="")
        return
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__,
        epilog="`python -m bench NAME --help` describes one benchmark.",
    )  # fmt: skip
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    module = _module(args.name)
    report = asyncio.run(module.run()).as_dict()
    if args.json:
        print(json.dumps(report))
        return
    for section in ("results", "baselines", "ratios"):
        print(f"{section}:")
        for key, value in report[section].items():
            print(f"  {key:40} {value}")
    if "table" in report:  # benches with rows (chaos) print them as a table too
        print(report["table"])


if __name__ == "__main__":
    main()

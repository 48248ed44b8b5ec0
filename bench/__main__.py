"""`python -m bench NAME [--json]`: run one benchmark and print its report."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json

NAMES = (
    "hotplug", "memory", "density", "invoke", "hotplug-e2e", "schedule", "schedule-churn", "e2e",
    "coldstart", "coldstart-layer", "gateway", "isolation-cost", "chaos", "cli",
    "versus-pods", "report", "scale",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    module = importlib.import_module(f"bench.{args.name.replace('-', '_')}")
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

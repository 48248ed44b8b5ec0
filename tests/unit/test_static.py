"""The code base stays ruff-clean, mypy --strict clean, and free of generated-file drift."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_lint_types_and_generated_files() -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "lint")], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

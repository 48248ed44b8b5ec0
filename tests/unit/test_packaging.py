"""`operator/` is installed as `nest_operator` and must never shadow the standard `operator`."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = "import operator, nest_operator; print(operator.__file__); print(nest_operator.__path__)"


def _stdlib_operator_file(stdout: str) -> str:
    return stdout.splitlines()[0]


def test_operator_is_the_standard_library_from_the_repo_root() -> None:
    # -I -S: no site, no user paths; '' first on sys.path is exactly "run from the repo root".
    code = "import sys; sys.path.insert(0, ''); import operator; print(operator.__file__)"
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert not out.stdout.strip().startswith(str(ROOT)), out.stdout
    assert out.stdout.strip().endswith("operator.py")


def test_operator_is_the_standard_library_from_an_installed_copy(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path / "src"
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__")
    )
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    assert (target / "nest_operator").is_dir()
    assert not (target / "operator").exists()
    code = f"import sys; sys.path.insert(0, {str(target)!r}); {PROBE}"
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert not _stdlib_operator_file(out.stdout).startswith(str(target))
    assert str(target / "nest_operator") in out.stdout

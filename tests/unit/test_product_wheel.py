"""The product wheel and image hold the product only: the local cluster (cluster/, the separate
nest-cluster distribution), bench/ and tests/ are development tools, and no product module
imports them (they reach the product, never the other way round)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.sources import imported_tops

ROOT = Path(__file__).resolve().parents[2]
DEV_TOOLS = {"nest_cluster", "bench", "tests"}


def _project(path: Path) -> dict[str, object]:
    with path.open("rb") as f:
        return tomllib.load(f)


def _product_dirs() -> dict[str, Path]:
    """Top-level package name -> its folder in the checkout, as pyproject.toml maps them."""
    setuptools = _project(ROOT / "pyproject.toml")["tool"]["setuptools"]  # type: ignore[index]
    mapped: dict[str, str] = setuptools.get("package-dir", {})
    tops = {name.split(".")[0] for name in setuptools["packages"]}
    return {top: ROOT / mapped.get(top, top) for top in tops}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    # Built from a copy of the tree as it is (links kept as links): setuptools writes build/ and
    # *.egg-info next to the sources.
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__"),
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(source), "-w", str(tmp / "dist")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (path,) = (tmp / "dist").glob("nest_sandbox-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_holds_the_product_packages_and_no_development_tool(
    wheel: zipfile.ZipFile,
) -> None:
    names = wheel.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == set(_product_dirs())
    assert not tops & DEV_TOOLS
    assert not [n for n in names if n.startswith("nest/cluster/")]
    entry_points = wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "nest_cluster" not in entry_points


def test_the_image_copies_the_product_and_no_development_tool() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {m.group(1) for m in re.finditer(r"^COPY (\S+) \1$", dockerfile, re.MULTILINE)}
    assert copied == {str(d.relative_to(ROOT)) for d in _product_dirs().values()}
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {"cluster", "bench", "tests"} <= ignored


def test_no_product_module_imports_a_development_tool() -> None:
    offenders = []
    for folder in _product_dirs().values():
        for where, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                if name.endswith(".py"):
                    path = Path(where) / name
                    if imported_tops(path) & DEV_TOOLS:
                        offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_the_local_cluster_distribution_lists_every_package_it_has() -> None:
    project = _project(ROOT / "cluster" / "pyproject.toml")
    listed = set(project["tool"]["setuptools"]["packages"])  # type: ignore[index]
    base = ROOT / "cluster"
    found = {
        str(init.parent.relative_to(base)).replace(os.sep, ".")
        for init in (base / "nest_cluster").rglob("__init__.py")
    }
    assert listed == found
    scripts = project["project"]["scripts"]  # type: ignore[index]
    assert scripts == {"nest-cluster": "nest_cluster.cli:main"}

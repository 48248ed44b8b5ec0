"""Dependency layers for tests: import roots as `pip install --target` leaves them, made in tmp
directories, so the loader and both backends can be tested with two versions of one package."""

from __future__ import annotations

from pathlib import Path


def make_layer(root: Path, pkg: str, version: str, native: bool = False) -> Path:
    """An import root as `pip install --target` leaves it: a package, a helper module it imports
    by its absolute name, and the distribution's dist-info."""
    (root / pkg).mkdir(parents=True)
    (root / pkg / "__init__.py").write_text(
        f"VERSION = {version!r}\nimport {pkg}_helper\nHELPER = {pkg}_helper.WHO\n"
    )
    (root / pkg / "sub.py").write_text(f"from {pkg} import VERSION as SEEN\n")
    (root / f"{pkg}_helper.py").write_text(f"WHO = 'helper {version}'\n")
    info = root / f"{pkg}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pkg}\nVersion: {version}\n")
    record = [f"{pkg}/__init__.py,,", f"{pkg}/sub.py,,", f"{pkg}_helper.py,,"]
    (info / "RECORD").write_text("\n".join(record) + "\n")
    (info / "WHEEL").write_text(f"Root-Is-Purelib: {'false' if native else 'true'}\n")
    return root


def make_code(root: Path, source: str) -> Path:
    root.mkdir(parents=True)
    (root / "main.py").write_text(source)
    return root

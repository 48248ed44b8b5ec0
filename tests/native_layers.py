"""Dependency layers holding a real compiled extension, for tests of what a runtime keeps loaded.

Why not the pure-Python stand-ins of tests.dependency_layers: what matters here is what CPython
does with a `.so` (loaded once per process, mapped from its file), so the extension is compiled
once per test session with the system's C compiler against this interpreter's headers. The
package imports its extension at once and a submodule (`extra`) only when asked, as real
packages do (numpy's, pandas'), which is what reads its directory again later.
"""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from functools import cache
from pathlib import Path

import pytest

from isolation.natives import EXTENSION_SUFFIXES

C_SOURCE = r"""
#include <Python.h>
static PyObject *answer(PyObject *self, PyObject *args) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speed", NULL, -1, methods};
PyMODINIT_FUNC PyInit__speed(void) { return PyModule_Create(&module); }
"""


@cache
def compiled_extension(build_dir: Path) -> Path:
    """`_speed<suffix>`, built once into `build_dir`; skips the test without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build a native extension with")
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / "_speed.c"
    source.write_text(C_SOURCE)
    target = build_dir / f"_speed{EXTENSION_SUFFIXES[0]}"
    include = sysconfig.get_paths()["include"]
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O0", f"-I{include}", "-o", str(target), str(source)],
        check=True,
        capture_output=True,
    )
    return target


def make_native_layer(root: Path, pkg: str, version: str, extension: Path) -> Path:
    """An import root as `pip install --target` leaves a compiled wheel: `pkg` (importing its
    `_speed` extension), a lazily imported `pkg.extra`, and the dist-info naming them."""
    (root / pkg).mkdir(parents=True)
    (root / pkg / "__init__.py").write_text(
        f"VERSION = {version!r}\nfrom {pkg} import _speed\nANSWER = _speed.answer()\n"
    )
    (root / pkg / "extra.py").write_text("WHO = 'extra'\n")
    shutil.copyfile(extension, root / pkg / extension.name)
    info = root / f"{pkg}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pkg}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(f"{pkg}\n")
    record = [f"{pkg}/__init__.py,,", f"{pkg}/extra.py,,", f"{pkg}/{extension.name},,"]
    (info / "RECORD").write_text("\n".join(record) + "\n")
    (info / "WHEEL").write_text("Root-Is-Purelib: false\n")
    return root

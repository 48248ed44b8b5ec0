"""Dependency layers in namespace mode: child-first pure-Python packages per sandbox, sys.path
edits kept to the sandbox that made them, native distributions once per runtime."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from isolation import loader, natives
from isolation.base import SandboxSpec, SandboxState
from isolation.contract import Request
from isolation.errors import LoadError
from isolation.namespace import NamespaceBackend
from tests.dependency_layers import make_code, make_layer

HANDLER = """
import importlib, importlib.metadata
import {pkg}
from {pkg} import sub

def handler(event, context):
    return {{
        "version": {pkg}.VERSION,
        "sub": sub.SEEN,
        "helper": {pkg}.HELPER,
        "dynamic": importlib.import_module("{pkg}").VERSION,
        "metadata": importlib.metadata.version("{pkg}"),
    }}
"""


def pkg_name() -> str:
    return f"tiny_{uuid.uuid4().hex[:8]}"  # the loader's state is per process: no reuse


@pytest.fixture
async def backend() -> AsyncIterator[NamespaceBackend]:
    impl = NamespaceBackend()
    yield impl
    await impl.close()


async def call(backend: NamespaceBackend, sandbox_id: str) -> object:
    response = await backend.invoke(sandbox_id, Request(body=b"{}"))
    assert response.status == 200, response.body
    return json.loads(response.body)


async def test_two_sandboxes_see_their_own_version_of_one_package(
    backend: NamespaceBackend, tmp_path: Path
) -> None:
    pkg = pkg_name()
    code = make_code(tmp_path / "code", HANDLER.format(pkg=pkg))
    v1 = make_layer(tmp_path / "v1", pkg, "1.0")
    v2 = make_layer(tmp_path / "v2", pkg, "2.0")
    await backend.create(SandboxSpec("a", str(code), "main:handler", dependency_paths=(str(v1),)))
    await backend.create(SandboxSpec("b", str(code), "main:handler", dependency_paths=(str(v2),)))
    assert await call(backend, "a") == {
        "version": "1.0", "sub": "1.0", "helper": "helper 1.0", "dynamic": "1.0",
        "metadata": "1.0",
    }  # fmt: skip
    assert await call(backend, "b") == {
        "version": "2.0", "sub": "2.0", "helper": "helper 2.0", "dynamic": "2.0",
        "metadata": "2.0",
    }  # fmt: skip
    assert pkg not in sys.modules and f"{pkg}_helper" not in sys.modules  # nothing shared
    await backend.remove("a")
    await backend.remove("b")
    assert not [name for name in sys.modules if name.startswith(loader.PREFIX)]


async def test_the_first_layer_that_ships_a_name_wins_and_own_code_before_layers(
    backend: NamespaceBackend, tmp_path: Path
) -> None:
    pkg = pkg_name()
    code = make_code(tmp_path / "code", f"import {pkg}_helper\ndef handler(e, c):\n"
                     f"    return {pkg}_helper.WHO\n")  # fmt: skip
    v1, v2 = make_layer(tmp_path / "v1", pkg, "1.0"), make_layer(tmp_path / "v2", pkg, "2.0")
    spec = SandboxSpec("a", str(code), "main:handler", dependency_paths=(str(v2), str(v1)))
    await backend.create(spec)
    assert (await backend.invoke("a", Request())).body == b"helper 2.0"
    (code / f"{pkg}_helper.py").write_text("WHO = 'own'\n")
    await backend.remove("a")
    await backend.create(spec)
    assert (await backend.invoke("a", Request())).body == b"own"


SYS_PATH_EDIT = """
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "vendor"))
import vendored

def handler(event, context):
    import vendored as again
    return {"who": vendored.WHO, "same": again is vendored, "first": sys.path[0]}
"""


async def test_sys_path_edits_stay_in_the_sandbox(
    backend: NamespaceBackend, tmp_path: Path
) -> None:
    code = make_code(tmp_path / "code", SYS_PATH_EDIT)
    (code / "vendor").mkdir()
    (code / "vendor" / "vendored.py").write_text("WHO = 'vendored'\n")
    other = make_code(tmp_path / "other", "def handler(e, c):\n    import vendored\n")
    before = list(sys.path)
    await backend.create(SandboxSpec("a", str(code), "main:handler"))
    assert await call(backend, "a") == {
        "who": "vendored", "same": True, "first": str(code / "vendor")
    }  # fmt: skip
    assert sys.path == before  # the pod's sys.path is untouched
    assert "vendored" not in sys.modules  # loaded into the sandbox's own package
    await backend.create(SandboxSpec("b", str(other), "main:handler"))
    response = await backend.invoke("b", Request())
    assert response.status == 500 and b"ModuleNotFoundError" in response.body


SITE_EDIT = """
import os, site
site.addsitedir(os.path.join(os.path.dirname(__file__), "vendor"))
import vendored

def handler(event, context):
    import vendored as again
    return {"who": again.WHO}
"""


async def test_an_edit_of_the_real_sys_path_is_undone_and_kept_for_the_sandbox(
    backend: NamespaceBackend, tmp_path: Path
) -> None:
    code = make_code(tmp_path / "code", SITE_EDIT)
    (code / "vendor").mkdir()
    (code / "vendor" / "vendored.py").write_text("WHO = 'site'\n")
    before = list(sys.path)
    await backend.create(SandboxSpec("a", str(code), "main:handler"))
    assert sys.path == before  # restored once its import returned
    assert "vendored" not in sys.modules
    assert await call(backend, "a") == {"who": "site"}  # still found: the entry is its own


def native_spec(sandbox_id: str, code: Path, layer: Path, dist: str) -> SandboxSpec:
    return SandboxSpec(
        sandbox_id, str(code), "main:handler", dependency_paths=(str(layer),),
        native_distributions=(dist,),
    )  # fmt: skip


async def test_a_native_distribution_loads_once_per_runtime_and_conflicts_are_refused(
    backend: NamespaceBackend, tmp_path: Path
) -> None:
    pkg = pkg_name()
    code = make_code(tmp_path / "code", f"import {pkg}\ndef handler(e, c):\n"
                     f"    return {{'v': {pkg}.VERSION, 'id': id({pkg})}}\n")  # fmt: skip
    v1a = make_layer(tmp_path / "v1a", pkg, "1.0", native=True)
    v1b = make_layer(tmp_path / "v1b", pkg, "1.0", native=True)
    v2 = make_layer(tmp_path / "v2", pkg, "2.0", native=True)
    await backend.create(native_spec("a", code, v1a, f"{pkg}==1.0"))
    await backend.create(native_spec("b", code, v1b, f"{pkg}==1.0"))
    a, b = await call(backend, "a"), await call(backend, "b")
    assert a == b and sys.modules[pkg].VERSION == "1.0"  # one module, under its real name
    name = natives.canonical(pkg)  # reported by its normalised name
    assert f"{name}==1.0" in backend.loaded_natives()
    with pytest.raises(LoadError) as refused:
        await backend.create(native_spec("c", code, v2, f"{pkg}==2.0"))
    assert refused.value.reason == "DependencyConflict"
    assert f"{name}==2.0" in refused.value.message and f"{name}==1.0" in refused.value.message
    status = backend.status("c")
    assert status.state is SandboxState.FAILED and status.reason == "DependencyConflict"
    await backend.remove("a")
    await backend.remove("b")
    with pytest.raises(LoadError):  # imported: it stays in the process for good
        await backend.create(native_spec("d", code, v2, f"{pkg}==2.0"))
    del sys.modules[pkg], sys.modules[f"{pkg}_helper"]


async def test_a_declared_native_nobody_imported_is_released_with_its_sandbox(
    backend: NamespaceBackend, tmp_path: Path
) -> None:
    pkg = pkg_name()
    code = make_code(tmp_path / "code", "def handler(e, c):\n    return 1\n")
    await backend.create(
        native_spec("a", code, make_layer(tmp_path / "1", pkg, "1.0"), f"{pkg}==1.0")
    )
    with pytest.raises(LoadError):  # declared: promised to "a" while it runs
        await backend.create(
            native_spec("b", code, make_layer(tmp_path / "2", pkg, "2.0"), f"{pkg}==2.0")
        )
    await backend.remove("a")
    await backend.remove("b")
    await backend.create(native_spec("c", code, tmp_path / "2", f"{pkg}==2.0"))
    assert f"{natives.canonical(pkg)}==2.0" in backend.loaded_natives()


async def test_the_runtimes_own_natives_count(backend: NamespaceBackend, tmp_path: Path) -> None:
    import pydantic_core  # loaded in this interpreter, as in every runtime

    have = natives.runtime_natives().get("pydantic-core")
    assert have == pydantic_core.__version__
    code = make_code(tmp_path / "code", "def handler(e, c):\n    return 1\n")
    layer = make_layer(tmp_path / "layer", "pydantic_core", "0.0.1", native=True)
    with pytest.raises(LoadError) as refused:
        await backend.create(native_spec("a", code, layer, "pydantic_core==0.0.1"))
    assert "the runtime's own" in refused.value.message
    assert f"pydantic-core=={have}" in backend.loaded_natives()


def test_native_specs_and_top_level_names() -> None:
    assert natives.parse(["Markup_Safe == 2.1.5", "numpy==1.26.4"]) == {
        "markup-safe": "2.1.5", "numpy": "1.26.4"
    }  # fmt: skip
    with pytest.raises(ValueError):
        natives.parse(["numpy>=1"])
    suffix = natives.EXTENSION_SUFFIXES[0]
    record = ["numpy/__init__.py", f"_cffi_backend{suffix}", "six.py", "numpy-1.dist-info/RECORD",
              "../../bin/f2py", "__pycache__/six.cpython-311.pyc"]  # fmt: skip
    assert natives.top_levels_of(record) == {"numpy", "_cffi_backend", "six"}


async def test_a_native_packages_pure_dependencies_load_beside_it(
    backend: NamespaceBackend, tmp_path: Path
) -> None:
    pkg = pkg_name()
    layer = make_layer(tmp_path / "layer", pkg, "1.0", native=True)
    # A separate pure-Python distribution the native one imports by its real name.
    (layer / pkg / "__init__.py").write_text(f"VERSION = '1.0'\nimport {pkg}_pure as PURE\n")
    (layer / f"{pkg}_pure.py").write_text("WHO = 'pure'\n")
    source = (
        f"import {pkg}, {pkg}_pure\ndef handler(e, c):\n"
        f"    return {{'shared': {pkg}.PURE.__name__, 'own': {pkg}_pure.__name__}}\n"
    )
    code = make_code(tmp_path / "code", source)
    await backend.create(native_spec("a", code, layer, f"{pkg}==1.0"))
    got = await call(backend, "a")
    assert isinstance(got, dict) and got["shared"] == f"{pkg}_pure"  # runtime-wide, beside it
    assert got["own"].startswith(loader.PREFIX)  # the sandbox's own import: its own copy
    del sys.modules[pkg], sys.modules[f"{pkg}_pure"]


async def test_the_roots_natives_load_from_are_reported_while_the_runtime_holds_them(
    backend: NamespaceBackend, tmp_path: Path
) -> None:
    imported, declared = pkg_name(), pkg_name()
    code = make_code(tmp_path / "code", f"import {imported}\ndef handler(e, c):\n    return 1\n")
    idle = make_code(tmp_path / "idle", "def handler(e, c):\n    return 1\n")
    first = make_layer(tmp_path / "first", imported, "1.0", native=True)
    other = make_layer(tmp_path / "other", declared, "1.0", native=True)
    await backend.create(native_spec("a", code, first, f"{imported}==1.0"))
    await backend.create(native_spec("b", idle, other, f"{declared}==1.0"))
    assert {str(first), str(other)} <= set(backend.native_roots())  # the ledger is per process
    await backend.remove("a")  # its package stays imported: the runtime still reads `first`
    await backend.remove("b")  # promised only, never imported: `other` is nobody's any more
    roots = backend.native_roots()
    assert str(first) in roots and str(other) not in roots
    del sys.modules[imported], sys.modules[f"{imported}_helper"]

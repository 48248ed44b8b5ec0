"""Unloading a namespace sandbox must not break what its code left in shared modules.

Why: pure-Python packages patch the standard library when imported (typing_extensions replaces
`typing._collect_parameters` on Python 3.11), and in namespace mode a sandbox's own copy of such
a package patches the runtime's one `typing`. Once that sandbox was unloaded, clearing its
modules' globals made the patched function raise NameError for every later sandbox that
subscripts a Generic (found with Flask after FastAPI in one pool pod: tests/integration/
test_interfaces.py). Unload drops the modules; the GC frees them when nothing uses them.
"""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

from isolation import loader

PATCHER = """
import json

_SUFFIX = "-patched"


def _patched_dumps(obj, **kw):
    return _ORIGINAL(obj, **kw) + _SUFFIX


_ORIGINAL = json.dumps
json._nest_test_dumps = _patched_dumps  # what typing_extensions does to typing
"""


def test_a_function_a_sandbox_patched_into_a_shared_module_works_after_unload(
    tmp_path: Path,
) -> None:
    (tmp_path / "patcher.py").write_text(PATCHER)
    finder = loader.install()
    ns = finder.load(str(tmp_path))
    module = weakref.ref(ns.import_module("patcher"))
    try:
        finder.unload(ns)
        del ns
        gc.collect()
        assert json._nest_test_dumps({"a": 1}) == '{"a": 1}-patched'  # type: ignore[attr-defined]
        assert module() is not None  # still used by the shared module: kept
    finally:
        del json._nest_test_dumps  # type: ignore[attr-defined]
    gc.collect()
    assert module() is None  # then freed like every unloaded module

"""Dependency layers through the runtime daemon's control API: `dependency_paths` and
`native_distributions` reach both backends, and the runtime reports the natives it holds."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from sandbox.api import CreateSandbox
from sandbox.client import RuntimeClient
from sandbox.errors import CreateFailed
from tests.dependency_layers import make_code, make_layer
from tests.unit.sandbox.conftest import RuntimeProcess

PKG = "nest_runtime_dep"
HANDLER = f"import {PKG}\ndef handler(event, context):\n    return {PKG}.VERSION\n"


def create(sandbox_id: str, isolation: str, code: Path, **kw: object) -> CreateSandbox:
    return CreateSandbox.model_validate(
        {"id": sandbox_id, "code_dir": str(code), "handler": "main:handler",
         "isolation": isolation, **kw}
    )  # fmt: skip


@pytest.mark.parametrize("isolation", ["namespace", "subprocess"])
async def test_two_sandboxes_of_one_runtime_use_two_versions_of_a_package(
    runtime: RuntimeProcess,
    client: RuntimeClient,
    http: aiohttp.ClientSession,
    shared_dir: Path,
    isolation: str,
) -> None:
    root = shared_dir
    code = make_code(root / "code", HANDLER)
    v1, v2 = make_layer(root / "v1", PKG, "1.0"), make_layer(root / "v2", PKG, "2.0")
    await client.create(create("a", isolation, code, dependency_paths=[str(v1)]))
    await client.create(create("b", isolation, code, dependency_paths=[str(v2)]))
    for sandbox_id, version in (("a", "1.0"), ("b", "2.0")):
        async with runtime.request(http, "POST", f"/v1/sandboxes/{sandbox_id}/invoke") as r:
            assert r.status == 200
            assert await r.text() == version


async def test_a_native_conflict_fails_with_dependency_conflict_and_is_reported(
    client: RuntimeClient, shared_dir: Path
) -> None:
    root = shared_dir
    code = make_code(root / "code", HANDLER)
    v1 = make_layer(root / "v1", PKG, "1.0", native=True)
    v2 = make_layer(root / "v2", PKG, "2.0", native=True)
    natives = {"native_distributions": [f"{PKG}==1.0"], "dependency_paths": [str(v1)]}
    await client.create(create("a", "namespace", code, **natives))
    name = PKG.replace("_", "-")
    assert f"{name}==1.0" in (await client.info()).native_distributions
    with pytest.raises(CreateFailed) as refused:
        await client.create(
            create("b", "namespace", code, native_distributions=[f"{PKG}==2.0"],
                   dependency_paths=[str(v2)])
        )  # fmt: skip
    assert refused.value.error == "DependencyConflict"
    assert f"{name}==2.0" in refused.value.message and f"{name}==1.0" in refused.value.message
    # A subprocess sandbox has an interpreter of its own: no conflict.
    await client.create(
        create("c", "subprocess", code, native_distributions=[f"{PKG}==2.0"],
               dependency_paths=[str(v2)])
    )  # fmt: skip

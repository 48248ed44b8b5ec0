"""A Sandbox whose source is still `build` is refused: only the operator resolves a build."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from crds.sandbox import CodeSource
from nest_sidecar.code_cache import CodeCache
from nest_sidecar.errors import InvalidSpec
from nest_sidecar.fetcher import CodeFetcher

CONTEXT = "127.0.0.1:5000/nest/team@sha256:" + "0" * 64


async def test_an_unresolved_build_source_is_an_invalid_spec(tmp_path: Path) -> None:
    async def read(namespace: str, name: str) -> None:
        return None

    source = CodeSource.model_validate({"build": {"context": CONTEXT}})
    async with aiohttp.ClientSession() as http:
        fetcher = CodeFetcher(CodeCache(tmp_path / "cache"), read, http)
        with pytest.raises(InvalidSpec, match=r"source\.build must be resolved by the operator"):
            await fetcher.fetch(source, "team")
    assert InvalidSpec.reason == "InvalidSpec"

"""The code fetcher for every source kind, with a real local HTTP server for URLs."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from crds.sandbox import CodeSource
from nest_sidecar.errors import (
    ChecksumMismatch,
    CodeFetchFailed,
    CodePathNotFound,
    ConfigMapNotFound,
    InvalidCodeArchive,
)
from nest_sidecar.fetcher import CodeCache, CodeFetcher, files_digest

HANDLER = "def handler(event, context):\n    return 1\n"


def _zip(files: Mapping[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


def _targz(files: Mapping[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


BLOBS = {
    "/code.zip": _zip({"main.py": HANDLER, "lib/util.py": "X = 1\n"}),
    "/code.tar.gz": _targz({"main.py": HANDLER}),
    "/single.py": HANDLER.encode(),
    "/evil.zip": _zip({"../escape.py": "x"}),
    "/notes.txt": b"not code",
}


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def blob(request: web.Request) -> web.Response:
        data = BLOBS.get(request.path)
        return web.Response(body=data) if data is not None else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{name:.*}", blob)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def fetcher(tmp_path: Path) -> AsyncIterator[CodeFetcher]:
    configmaps = {("ns", "code"): {"main.py": HANDLER, "extra.py": "Y = 2\n"}}

    async def read(namespace: str, name: str) -> Mapping[str, str] | None:
        return configmaps.get((namespace, name))

    async with aiohttp.ClientSession() as http:
        yield CodeFetcher(CodeCache(tmp_path / "cache"), read, http)


def _url(base: str, path: str, sha: str | None = None) -> CodeSource:
    digest = sha or hashlib.sha256(BLOBS[path]).hexdigest()
    return CodeSource(url=base + path, sha256=digest)


async def test_inline_code_is_stored_once_by_content(fetcher: CodeFetcher) -> None:
    a = await fetcher.fetch(CodeSource(inline={"main.py": HANDLER}), "ns")
    b = await fetcher.fetch(CodeSource(inline={"main.py": HANDLER}), "other")
    assert a == b
    assert (a.path / "main.py").read_text() == HANDLER
    assert a.digest == files_digest({"main.py": HANDLER.encode()})
    c = await fetcher.fetch(CodeSource(inline={"main.py": HANDLER + "# v2\n"}), "ns")
    assert c.digest != a.digest


async def test_configmap_all_keys_or_one_key(fetcher: CodeFetcher) -> None:
    whole = await fetcher.fetch(CodeSource(configMap={"name": "code"}), "ns")
    assert sorted(p.name for p in whole.path.iterdir()) == ["extra.py", "main.py"]
    one = await fetcher.fetch(CodeSource(configMap={"name": "code", "key": "main.py"}), "ns")
    assert [p.name for p in one.path.iterdir()] == ["main.py"]


async def test_missing_configmap_and_key_are_named(fetcher: CodeFetcher) -> None:
    with pytest.raises(ConfigMapNotFound, match="ns/nope"):
        await fetcher.fetch(CodeSource(configMap={"name": "nope"}), "ns")
    with pytest.raises(ConfigMapNotFound, match=r"no key 'x\.py'"):
        await fetcher.fetch(CodeSource(configMap={"name": "code", "key": "x.py"}), "ns")
    with pytest.raises(ConfigMapNotFound):
        await fetcher.fetch(CodeSource(configMap={"name": "code"}), "elsewhere")


@pytest.mark.parametrize("path", ["/code.zip", "/code.tar.gz", "/single.py"])
async def test_url_archives_unpack(fetcher: CodeFetcher, server: str, path: str) -> None:
    ref = await fetcher.fetch(_url(server, path), "ns")
    names = {p.relative_to(ref.path).as_posix() for p in ref.path.rglob("*.py")}
    assert ("main.py" in names) or ("single.py" in names)
    if path == "/code.zip":
        assert "lib/util.py" in names


async def test_wrong_sha256_is_a_checksum_mismatch(fetcher: CodeFetcher, server: str) -> None:
    with pytest.raises(ChecksumMismatch, match="sha256 is"):
        await fetcher.fetch(_url(server, "/code.zip", sha="0" * 64), "ns")
    assert not fetcher.cache.root.exists() or not any(fetcher.cache.root.iterdir())


async def test_http_errors_and_bad_archives_are_named(fetcher: CodeFetcher, server: str) -> None:
    with pytest.raises(CodeFetchFailed, match="HTTP 404"):
        await fetcher.fetch(CodeSource(url=server + "/missing.zip", sha256="0" * 64), "ns")
    with pytest.raises(CodeFetchFailed):
        await fetcher.fetch(CodeSource(url="http://127.0.0.1:1/x.py", sha256="0" * 64), "ns")
    with pytest.raises(InvalidCodeArchive, match="escape"):
        await fetcher.fetch(_url(server, "/evil.zip"), "ns")
    with pytest.raises(InvalidCodeArchive, match="expected"):
        await fetcher.fetch(_url(server, "/notes.txt"), "ns")


async def test_path_source_must_exist(fetcher: CodeFetcher, tmp_path: Path) -> None:
    ref = await fetcher.fetch(CodeSource(path=str(tmp_path)), "ns")
    assert ref.path == tmp_path
    with pytest.raises(CodePathNotFound):
        await fetcher.fetch(CodeSource(path=str(tmp_path / "absent")), "ns")

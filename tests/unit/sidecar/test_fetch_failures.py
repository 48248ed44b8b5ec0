"""Every way a fetch fails is a typed error naming its cause: files, disks, servers that hang.

The servers are real (aiohttp on 127.0.0.1) and hang for real; the deadlines are the fetcher's
own, set short. Disk errors no test machine can produce on demand (a full disk; EACCES, which
root does not meet) are injected at the write.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import socket
import zipfile
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from kubernetes.client.exceptions import ApiException

from crds.sandbox import CodeSource
from nest_sidecar import fetcher as fetcher_module
from nest_sidecar.errors import CodeFetchFailed, InvalidCodeArchive, InvalidSpec
from nest_sidecar.fetcher import (
    CodeCache,
    CodeFetcher,
    FetchTimeouts,
    describe_http_failure,
    layout_problem,
)

SHORT = FetchTimeouts(connect=0.3, read=0.3, total=60)
HANDLER = b"def handler(event, context):\n    return 1\n"
LONG = "a" * 300 + ".py"


def _zip(files: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _source(url: str, data: bytes = b"") -> CodeSource:
    return CodeSource(url=url, sha256=hashlib.sha256(data).hexdigest())


async def _no_configmaps(namespace: str, name: str) -> Mapping[str, str] | None:
    return None


@pytest.fixture
async def fetcher(tmp_path: Path) -> AsyncIterator[CodeFetcher]:
    async with aiohttp.ClientSession() as http:
        yield CodeFetcher(CodeCache(tmp_path / "cache"), _no_configmaps, http, SHORT)


# -- files the file system refuses ---------------------------------------------------------------


def test_layout_problems_are_found_before_writing() -> None:
    assert layout_problem(["main.py", "lib/util.py"]) is None
    assert layout_problem(["a", "a/b.py"]) == ("a/b.py", "is inside 'a', which is a file")
    assert layout_problem(["x/a", "x/a/b/c.py"]) == (
        "x/a/b/c.py",
        "is inside 'x/a', which is a file",
    )
    name, why = layout_problem([f"pkg/{LONG}"]) or ("", "")
    assert name == f"pkg/{LONG}" and "longer than 255 bytes" in why


def test_a_300_byte_name_is_invalid_and_named(fetcher: CodeFetcher) -> None:
    with pytest.raises(InvalidSpec, match=r"'aaaa.*a\.py' \(303 bytes\).*longer than 255") as exc:
        fetcher.store({LONG: HANDLER, "main.py": HANDLER})
    assert len(str(exc.value)) < 200  # the name is shortened in the message
    assert not any(fetcher.cache.root.iterdir())  # no partial directory stays behind


def test_a_file_beside_a_directory_of_the_same_name_is_invalid(fetcher: CodeFetcher) -> None:
    with pytest.raises(InvalidSpec, match=r"'a/b\.py' is inside 'a'"):
        fetcher.store({"a": b"", "a/b.py": HANDLER})


def test_a_path_too_long_as_a_whole_is_invalid_by_errno(fetcher: CodeFetcher) -> None:
    deep = "/".join(["d" * 250] * 20) + "/main.py"  # every part fits, the path does not
    with pytest.raises(InvalidSpec, match="cannot be written: File name too long"):
        fetcher.store({deep: HANDLER})


@pytest.mark.parametrize(
    ("code", "text"),
    [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied")],
)
def test_disk_errors_are_a_fetch_failure_naming_the_file(
    fetcher: CodeFetcher, monkeypatch: pytest.MonkeyPatch, code: int, text: str
) -> None:
    def refuse(self: Path, data: bytes) -> int:
        raise OSError(code, text, str(self))

    monkeypatch.setattr(Path, "write_bytes", refuse)
    with pytest.raises(CodeFetchFailed, match=f"writing file 'pkg/main.py': {text}"):
        fetcher.store({"pkg/main.py": HANDLER})


async def test_an_unusable_cache_directory_is_a_fetch_failure_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    async with aiohttp.ClientSession() as http:
        broken = CodeFetcher(CodeCache(tmp_path / "file" / "cache"), _no_configmaps, http)
        with pytest.raises(CodeFetchFailed, match=r"code cache .*file/cache: \w+Error"):
            await broken.fetch(CodeSource(inline={"main.py": "x = 1\n"}), "ns")


async def test_an_api_error_reading_the_configmap_is_named(tmp_path: Path) -> None:
    async def failing(namespace: str, name: str) -> Mapping[str, str] | None:
        raise ApiException(status=500, reason="Internal Server Error")

    async with aiohttp.ClientSession() as http:
        f = CodeFetcher(CodeCache(tmp_path), failing, http)
        with pytest.raises(CodeFetchFailed, match=r"ConfigMap ns/code: ApiException: \(500\)"):
            await f.fetch(CodeSource.model_validate({"configMap": {"name": "code"}}), "ns")


# -- servers -------------------------------------------------------------------------------------


class Hanging:
    """A local server whose paths hang in different places until the test ends."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.blobs = {
            "/clash.zip": _zip({"a": b"", "a/b.py": HANDLER}),
            "/long.zip": _zip({LONG: HANDLER}),
            "/big.zip": _zip({"main.py": HANDLER * 100}),
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/headers.zip":  # accepts, then never answers
            await self.release.wait()
        if request.path in ("/body.zip", "/drip.zip"):
            resp = web.StreamResponse(headers={"Content-Length": "1000000"})
            await resp.prepare(request)
            await resp.write(b"PK")
            while request.path == "/drip.zip" and not self.release.is_set():
                await resp.write(b"x")  # never quiet long enough for the read deadline
                await asyncio.sleep(0.05)
            await self.release.wait()
            return resp
        data = self.blobs.get(request.path)
        return web.Response(body=data) if data is not None else web.Response(status=404)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Hanging]]:
    hanging = Hanging()
    app = web.Application()
    app.router.add_get("/{name:.*}", hanging.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", hanging
    hanging.release.set()
    await runner.cleanup()


async def test_a_server_that_never_answers_is_a_read_timeout(
    fetcher: CodeFetcher, server: tuple[str, Hanging]
) -> None:
    base, _ = server
    with pytest.raises(CodeFetchFailed) as exc:
        await fetcher.fetch(_source(f"{base}/headers.zip"), "ns")
    assert str(exc.value) == f"GET {base}/headers.zip: read timed out after 0.3s"


async def test_a_body_that_stops_coming_is_a_read_timeout(
    fetcher: CodeFetcher, server: tuple[str, Hanging]
) -> None:
    base, _ = server
    with pytest.raises(CodeFetchFailed, match=r"body\.zip: read timed out after 0\.3s$"):
        await fetcher.fetch(_source(f"{base}/body.zip"), "ns")


async def test_a_download_that_never_ends_meets_the_overall_deadline(
    tmp_path: Path, server: tuple[str, Hanging]
) -> None:
    base, _ = server
    timeouts = FetchTimeouts(connect=5, read=5, total=0.5)
    async with aiohttp.ClientSession() as http:
        f = CodeFetcher(CodeCache(tmp_path), _no_configmaps, http, timeouts)
        with pytest.raises(CodeFetchFailed, match=r"drip\.zip: not finished after 0\.5s"):
            await f.fetch(_source(f"{base}/drip.zip"), "ns")


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose listen queue is full: a connect to it neither succeeds nor fails."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    while True:  # connect until one hangs: only then is the queue known to be full
        filler = socket.socket()
        filler.settimeout(0.3)
        fillers.append(filler)
        try:
            filler.connect(("127.0.0.1", port))
        except TimeoutError:
            break
        assert len(fillers) < 16, "the listen queue never filled up"
    yield port
    for s in [*fillers, listener]:
        s.close()


async def test_a_server_that_does_not_accept_is_a_connect_timeout(
    fetcher: CodeFetcher, full_backlog: int
) -> None:
    url = f"http://127.0.0.1:{full_backlog}/code.zip"
    with pytest.raises(CodeFetchFailed) as exc:
        await fetcher.fetch(_source(url), "ns")
    assert str(exc.value) == f"GET {url}: connect timed out after 0.3s"


async def test_a_refused_connection_names_the_exception(fetcher: CodeFetcher) -> None:
    with pytest.raises(CodeFetchFailed, match=r"127\.0\.0\.1:1/x\.py: ClientConnectorError: "):
        await fetcher.fetch(_source("http://127.0.0.1:1/x.py"), "ns")


async def test_archives_with_impossible_files_are_invalid_and_named(
    fetcher: CodeFetcher, server: tuple[str, Hanging]
) -> None:
    base, hanging = server
    clash = hanging.blobs["/clash.zip"]
    with pytest.raises(InvalidCodeArchive, match=r"'a/b\.py' is inside 'a'"):
        await fetcher.fetch(_source(f"{base}/clash.zip", clash), "ns")
    long = hanging.blobs["/long.zip"]
    with pytest.raises(InvalidCodeArchive, match=r"\(303 bytes\) has a path component longer"):
        await fetcher.fetch(_source(f"{base}/long.zip", long), "ns")


async def test_an_archive_that_unpacks_too_big_is_refused(
    fetcher: CodeFetcher, server: tuple[str, Hanging], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, hanging = server
    monkeypatch.setattr(fetcher_module, "MAX_UNPACKED_BYTES", 1000)
    big = hanging.blobs["/big.zip"]
    with pytest.raises(InvalidCodeArchive, match=r"big\.zip unpacks to 4200 bytes, more than 1000"):
        await fetcher.fetch(_source(f"{base}/big.zip", big), "ns")


def test_timeouts_are_described_even_when_the_exception_says_nothing() -> None:
    assert describe_http_failure(TimeoutError(), SHORT) == (
        "not finished after 60s (the whole download's deadline)"
    )
    read = aiohttp.ServerTimeoutError("Timeout on reading data from socket")
    assert describe_http_failure(read, SHORT) == "read timed out after 0.3s"
    connect = aiohttp.ServerTimeoutError("Connection timeout to host http://x")
    assert describe_http_failure(connect, SHORT) == "connect timed out after 0.3s"
    assert describe_http_failure(aiohttp.ClientPayloadError(), SHORT) == "ClientPayloadError"

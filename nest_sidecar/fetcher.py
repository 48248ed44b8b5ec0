"""Fetches a sandbox's code into a content-addressed cache, for every kind of code source.

The cache is keyed by the SHA-256 of the files themselves, so a hundred sandboxes of one function
share one directory on disk, a re-fetch after a sidecar restart finds the code already there, and
the scheduler's code-locality score can compare digests across pods. Entries are written to a
temporary directory and renamed into place, so a crash mid-fetch never leaves a half-written entry
that a later sandbox would import.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import aiohttp

from crds.sandbox import CodeSource
from nest_sidecar.errors import (
    ChecksumMismatch,
    CodeFetchFailed,
    CodePathNotFound,
    ConfigMapNotFound,
    InvalidCodeArchive,
)

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
# (namespace, name) -> the ConfigMap's data, or None when it does not exist.
ConfigMapReader = Callable[[str, str], Awaitable[Mapping[str, str] | None]]


@dataclass(frozen=True)
class CodeRef:
    """Fetched code: its content digest and the directory the runtime loads it from."""

    digest: str
    path: Path


def files_digest(files: Mapping[str, bytes]) -> str:
    """SHA-256 over the sorted (name, content) pairs; independent of dict order."""
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _safe_name(name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise InvalidCodeArchive(f"archive member {name!r} would escape the code directory")
    return path.as_posix()


def unpack(data: bytes, url: str) -> dict[str, bytes]:
    """The files of a downloaded .zip, .tar.gz/.tgz or single .py, by relative path."""
    name = url.split("?", 1)[0].rsplit("/", 1)[-1]
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                return {
                    _safe_name(info.filename): zf.read(info)
                    for info in zf.infolist()
                    if not info.is_dir()
                }
        if name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(fileobj=io.BytesIO(data)) as tf:
                files = {}
                for member in tf.getmembers():
                    if member.issym() or member.islnk():
                        raise InvalidCodeArchive(f"archive member {member.name!r} is a link")
                    if member.isfile():
                        extracted = tf.extractfile(member)
                        assert extracted is not None
                        files[_safe_name(member.name)] = extracted.read()
                return files
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise InvalidCodeArchive(f"cannot unpack {name}: {exc}") from exc
    if name.endswith(".py"):
        return {name: data}
    raise InvalidCodeArchive(f"{name}: expected a .zip, .tar.gz, .tgz or .py file")


class CodeCache:
    """Directories of code under `root`, one per content digest."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / digest

    def store(self, files: Mapping[str, bytes]) -> CodeRef:
        digest = files_digest(files)
        final = self.path(digest)
        if final.is_dir():
            return CodeRef(digest, final)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.root))
        try:
            for name, data in files.items():
                target = tmp / _safe_name(name)
                target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                target.write_bytes(data)
                target.chmod(0o644)
            # Readable (never writable) by the sandboxes, which run as uids of their own;
            # Landlock lets each read only its own entry.
            for directory in (tmp, *(p for p in tmp.rglob("*") if p.is_dir())):
                directory.chmod(0o755)
            os.rename(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not final.is_dir():  # a concurrent fetch of the same code may have won the rename
                raise
        return CodeRef(digest, final)


class CodeFetcher:
    """Turns a Sandbox's code source into a `CodeRef`; raises a typed error naming the cause."""

    def __init__(
        self, cache: CodeCache, read_configmap: ConfigMapReader, http: aiohttp.ClientSession
    ) -> None:
        self.cache = cache
        self.read_configmap = read_configmap
        self.http = http

    async def fetch(self, source: CodeSource, namespace: str) -> CodeRef:
        if source.inline is not None:
            return self.cache.store({k: v.encode() for k, v in source.inline.items()})
        if source.config_map is not None:
            return await self._configmap(namespace, source.config_map.name, source.config_map.key)
        if source.url is not None and source.sha256 is not None:
            return await self._url(source.url, source.sha256)
        if source.path is not None:
            path = Path(source.path)
            if not path.is_dir():
                raise CodePathNotFound(f"code path {source.path} does not exist in the pool pod")
            return CodeRef(hashlib.sha256(f"path:{path}".encode()).hexdigest(), path)
        raise InvalidCodeArchive("the code source names no code")

    async def _configmap(self, namespace: str, name: str, key: str | None) -> CodeRef:
        data = await self.read_configmap(namespace, name)
        if data is None:
            raise ConfigMapNotFound(f"ConfigMap {namespace}/{name} not found")
        if key is not None:
            if key not in data:
                raise ConfigMapNotFound(f"ConfigMap {namespace}/{name} has no key {key!r}")
            data = {key: data[key]}
        return self.cache.store({k: v.encode() for k, v in data.items()})

    async def _url(self, url: str, sha256: str) -> CodeRef:
        try:
            async with self.http.get(url) as resp:
                if resp.status != 200:
                    raise CodeFetchFailed(f"GET {url}: HTTP {resp.status}")
                body = await resp.content.read(MAX_DOWNLOAD_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CodeFetchFailed(f"GET {url}: {exc or type(exc).__name__}") from exc
        if len(body) > MAX_DOWNLOAD_BYTES:
            raise CodeFetchFailed(f"GET {url}: larger than {MAX_DOWNLOAD_BYTES} bytes")
        actual = hashlib.sha256(body).hexdigest()
        if actual != sha256:
            raise ChecksumMismatch(f"{url}: sha256 is {actual}, the Sandbox pins {sha256}")
        return self.cache.store(unpack(body, url))

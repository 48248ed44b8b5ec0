"""Fetches a sandbox's code into the content-addressed cache, for every kind of code source.

The cache is keyed by the SHA-256 of the files themselves, so a hundred sandboxes of one function
share one directory on disk, a re-fetch after a sidecar restart finds the code already there, and
the scheduler's code-locality score can compare digests across pods (`code_cache` keeps it
bounded and writes entries atomically). Function packages (`oci`) are the exception to one
directory per source: their layers are cached one by one, by layer digest (`packages`).

Every way a fetch can fail ends as a typed error whose message names the cause, because the
worker copies it into the Sandbox's status: the file the file system refused (a 300-byte name, `a`
beside `a/b.py`, a full disk), the address and what went wrong there. Downloads have connect,
read and overall deadlines, so a server that hangs is a `CodeFetchFailed` within seconds, not a
sandbox `Starting` for minutes; aiohttp's timeout exceptions have empty messages, so the message
says which deadline passed.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tarfile
import zipfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import aiohttp

from crds.sandbox import CodeSource
from nest_sidecar.code_cache import CodeCache
from nest_sidecar.errors import (
    ChecksumMismatch,
    CodeFetchFailed,
    CodePathNotFound,
    ConfigMapNotFound,
    InvalidCodeArchive,
    InvalidSpec,
    SidecarError,
    describe_exception,
    shown_name,
)
from nest_sidecar.packages import PackageFetcher

__all__ = ["CodeCache", "CodeFetcher", "CodeRef", "FetchTimeouts", "files_digest", "unpack"]

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
# What an archive may unpack to: the sidecar holds the files in memory (its limit is 256 MiB),
# and a zip bomb must be an InvalidCodeArchive, not an OOM-killed sidecar.
MAX_UNPACKED_BYTES = 128 * 1024 * 1024
NAME_MAX = 255  # bytes of one path component (Linux)
# errno of a write that no retry can fix: the layout itself is impossible.
LAYOUT_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST})
# (namespace, name) -> the ConfigMap's data, or None when it does not exist.
ConfigMapReader = Callable[[str, str], Awaitable[Mapping[str, str] | None]]
Invalid = type[SidecarError]  # InvalidSpec for the Sandbox's own files, InvalidCodeArchive


@dataclass(frozen=True)
class CodeRef:
    """Fetched code: its content digest and the directory the runtime loads it from; for a
    function package also its dependency layers' directories (import roots, in order, shared
    with every function built on the same layer) and its native distributions (`name==version`,
    which the runtime can load only once)."""

    digest: str
    path: Path
    dependency_paths: tuple[Path, ...] = ()
    native_distributions: tuple[str, ...] = ()


@dataclass(frozen=True)
class FetchTimeouts:
    """Deadlines of a download, seconds: connecting, each read, and the whole download."""

    connect: float = 30.0
    read: float = 30.0
    total: float = 300.0

    def client(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.total, sock_connect=self.connect, sock_read=self.read
        )


def describe_http_failure(exc: BaseException, timeouts: FetchTimeouts) -> str:
    """What went wrong with a download, never empty: which deadline passed, or the exception."""
    if isinstance(exc, TimeoutError):
        kind, text = type(exc).__name__, str(exc).lower()
        if "connection" in kind.lower() or text.startswith("connection timeout"):
            return f"connect timed out after {timeouts.connect:g}s"
        if "socket" in kind.lower() or "reading" in text:
            return f"read timed out after {timeouts.read:g}s"
        return f"not finished after {timeouts.total:g}s (the whole download's deadline)"
    return describe_exception(exc)


def files_digest(files: Mapping[str, bytes]) -> str:
    """SHA-256 over the sorted (name, content) pairs; independent of dict order."""
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _safe_name(name: str, invalid: Invalid = InvalidCodeArchive) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise invalid(f"file {shown_name(name)} would escape the code directory")
    return path.as_posix()


def layout_problem(names: Iterable[str]) -> tuple[str, str] | None:
    """(file, why) for the first file that cannot be written beside the others, else None.

    What the file system would refuse with ENAMETOOLONG or ENOTDIR, said before writing: a path
    component longer than NAME_MAX, or a file that another file needs as its directory.
    """
    names = sorted(set(names))
    files = set(names)
    for name in names:
        parts = name.split("/")
        for part in parts:
            if len(part.encode("utf-8", "surrogatepass")) > NAME_MAX:
                return name, f"has a path component longer than {NAME_MAX} bytes"
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in files:
                return name, f"is inside {shown_name(parent)}, which is a file"
    return None


def write_files(directory: Path, files: Mapping[str, bytes], invalid: Invalid) -> None:
    """Write `files` under `directory`; a failure names the file and the errno's meaning."""
    problem = layout_problem(files)
    if problem is not None:
        raise invalid(f"file {shown_name(problem[0])} {problem[1]}")
    for name, data in files.items():
        target = directory / name
        try:
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(0o644)
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else describe_exception(exc)
            if exc.errno in LAYOUT_ERRNOS:
                raise invalid(f"file {shown_name(name)} cannot be written: {why}") from exc
            raise CodeFetchFailed(f"writing file {shown_name(name)}: {why}") from exc


def unpack(data: bytes, url: str) -> dict[str, bytes]:
    """The files of a downloaded .zip, .tar.gz/.tgz or single .py, by relative path."""
    name = url.split("?", 1)[0].rsplit("/", 1)[-1]
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                members = [info for info in zf.infolist() if not info.is_dir()]
                _check_unpacked(name, sum(info.file_size for info in members))
                return {_safe_name(info.filename): zf.read(info) for info in members}
        if name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(fileobj=io.BytesIO(data)) as tf:
                files = {}
                entries = tf.getmembers()
                _check_unpacked(name, sum(m.size for m in entries if m.isfile()))
                for member in entries:
                    if member.issym() or member.islnk():
                        raise InvalidCodeArchive(f"archive member {member.name!r} is a link")
                    if member.isfile():
                        extracted = tf.extractfile(member)
                        assert extracted is not None
                        files[_safe_name(member.name)] = extracted.read()
                return files
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidCodeArchive(f"cannot unpack {name}: {describe_exception(exc)}") from exc
    if name.endswith(".py"):
        return {name: data}
    raise InvalidCodeArchive(f"{name}: expected a .zip, .tar.gz, .tgz or .py file")


def _check_unpacked(name: str, size: int) -> None:
    if size > MAX_UNPACKED_BYTES:
        raise InvalidCodeArchive(f"{name} unpacks to {size} bytes, more than {MAX_UNPACKED_BYTES}")


class CodeFetcher:
    """Turns a Sandbox's code source into a `CodeRef`; raises a typed error naming the cause."""

    def __init__(
        self,
        cache: CodeCache,
        read_configmap: ConfigMapReader,
        http: aiohttp.ClientSession,
        timeouts: FetchTimeouts | None = None,
        packages: PackageFetcher | None = None,
    ) -> None:
        self.cache = cache
        self.read_configmap = read_configmap
        self.http = http
        self.timeouts = timeouts or FetchTimeouts()
        self.packages = packages

    async def fetch(self, source: CodeSource, namespace: str, user: str | None = None) -> CodeRef:
        """The code of `source`, pinned in the cache for `user` (a sandbox uid) when given."""
        if source.inline is not None:
            files = {k: v.encode("utf-8", "surrogatepass") for k, v in source.inline.items()}
            return self.store(files, InvalidSpec, user)
        if source.config_map is not None:
            cm = source.config_map
            return await self._configmap(namespace, cm.name, cm.key, user)
        if source.url is not None and source.sha256 is not None:
            return await self._url(source.url, source.sha256, user)
        if source.path is not None:
            path = Path(source.path)
            if not path.is_dir():
                raise CodePathNotFound(f"code path {source.path} does not exist in the pool pod")
            return CodeRef(hashlib.sha256(f"path:{path}".encode()).hexdigest(), path)
        if source.oci is not None:
            if self.packages is None:
                raise CodeFetchFailed("this sidecar cannot pull function packages (oci)")
            oci = source.oci
            package = await self.packages.fetch(oci.ref, oci.pull_secret, namespace, user)
            return CodeRef(package.digest, package.code, package.dependencies, package.native)
        if source.build is not None:  # only a SandboxDeployment builds; its sets get oci
            raise InvalidSpec("source.build must be resolved by the operator")
        raise InvalidCodeArchive("the code source names no code")

    def store(
        self, files: Mapping[str, bytes], invalid: Invalid = InvalidSpec, user: str | None = None
    ) -> CodeRef:
        """Put `files` in the cache (once per content) and pin them for `user`."""
        for name in files:
            _safe_name(name, invalid)
        digest = files_digest(files)
        try:
            path = self.cache.put(digest, lambda d: write_files(d, files, invalid), user)
        except OSError as exc:  # the cache directory itself (not one file) cannot be written
            raise CodeFetchFailed(
                f"code cache {self.cache.root}: {describe_exception(exc)}"
            ) from exc
        return CodeRef(digest, path)

    async def _configmap(
        self, namespace: str, name: str, key: str | None, user: str | None
    ) -> CodeRef:
        try:
            data = await self.read_configmap(namespace, name)
        except Exception as exc:  # the API server refused or failed: say so, retry later
            raise CodeFetchFailed(
                f"reading ConfigMap {namespace}/{name}: {describe_exception(exc).splitlines()[0]}"
            ) from exc
        if data is None:
            raise ConfigMapNotFound(f"ConfigMap {namespace}/{name} not found")
        if key is not None:
            if key not in data:
                raise ConfigMapNotFound(f"ConfigMap {namespace}/{name} has no key {key!r}")
            data = {key: data[key]}
        return self.store({k: v.encode() for k, v in data.items()}, InvalidSpec, user)

    async def _url(self, url: str, sha256: str, user: str | None) -> CodeRef:
        try:
            async with self.http.get(url, timeout=self.timeouts.client()) as resp:
                if resp.status != 200:
                    raise CodeFetchFailed(f"GET {url}: HTTP {resp.status}")
                chunks, size = [], 0
                async for chunk in resp.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise CodeFetchFailed(f"GET {url}: larger than {MAX_DOWNLOAD_BYTES} bytes")
                    chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CodeFetchFailed(
                f"GET {url}: {describe_http_failure(exc, self.timeouts)}"
            ) from exc
        body = b"".join(chunks)
        actual = hashlib.sha256(body).hexdigest()
        if actual != sha256:
            raise ChecksumMismatch(f"{url}: sha256 is {actual}, the Sandbox pins {sha256}")
        return self.store(unpack(body, url), InvalidCodeArchive, user)

"""Build contexts: a function's directory, as uploaded, stored as an OCI artifact by digest.

Why it exists: a downstream platform that has no Python of its own uploads the directory (code
plus requirements.txt or pyproject.toml) to the gateway, and a Kubernetes Job builds the package
in the cluster (`nest-build`, nest.package.job). Between the two the directory travels through
the registry the packages already live in, as an artifact pinned by digest, so the function's
`source.build.context` names exactly the bytes that were uploaded and the Job needs no API
rights to fetch them. Both the gateway (push) and the Job (pull) import this module: the format
and its safety rules are written once, in the lower layer.

The artifact (an OCI image manifest, schemaVersion 2, pushed by digest, no tag):
- config (CONTEXT_CONFIG_MEDIA_TYPE): `{"files": <count>}`;
- exactly one layer (CONTEXT_MEDIA_TYPE): a gzip tar of the directory.

What a context may hold (`check_context`, before anything is stored or written): regular files
and directories only (no links, devices or FIFOs: `sandbox.layers.member_problem`, the sidecar's
rule for layers), relative names without `..`, each path component at most NAME_MAX bytes and a
whole name at most PATH_MAX_BYTES, no name twice and no file where another entry needs a
directory, at most MAX_FILES files and MAX_UNPACKED_BYTES once unpacked, MAX_CONTEXT_BYTES
compressed. Every refusal names the entry.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from sandbox.layers import (
    Credentials,
    Descriptor,
    PackageError,
    Reference,
    client,
    download_blob,
    fetch_config,
    fetch_manifest,
    member_problem,
    push_artifact,
    read_manifest,
    sha256_digest,
    shown_name,
    write_member,
)

MIB = 1024 * 1024
CONTEXT_CONFIG_MEDIA_TYPE = "application/vnd.nest.function.context.v1+json"
CONTEXT_MEDIA_TYPE = "application/vnd.nest.function.context.v1.tar+gzip"
TITLE = "context.tar.gz"  # the layer's name for `oras pull`
MAX_CONTEXT_BYTES = 64 * MIB  # compressed, as uploaded
MAX_UNPACKED_BYTES = 256 * MIB  # the build Job's /tmp holds it beside pip's work
MAX_FILES = 20_000
MAX_MEMBERS = 2 * MAX_FILES  # files plus directories
NAME_MAX = 255  # bytes of one path component (Linux)
PATH_MAX_BYTES = 1024  # of a whole relative name: leaves room under PATH_MAX for the directory
_CHUNK = 1024 * 1024


class ContextError(PackageError):
    """A context that can never be built (the bytes at a digest never change: permanent); the
    message names the entry. `entry` is that entry's name, when one is to blame."""

    def __init__(self, message: str, entry: str | None = None) -> None:
        super().__init__(message, permanent=True)
        self.entry = entry


def _name_problem(name: str) -> str | None:
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > PATH_MAX_BYTES:
        return f"has a name longer than {PATH_MAX_BYTES} bytes"
    if any(len(part.encode("utf-8", "surrogateescape")) > NAME_MAX for part in name.split("/")):
        return f"has a path component longer than {NAME_MAX} bytes"
    return None


class _Checker:
    """The rules, applied member by member as a streamed tar goes by (its content unread)."""

    def __init__(self, max_unpacked: int) -> None:
        self.max_unpacked = max_unpacked
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self.members = 0
        self.unpacked = 0

    def check(self, member: tarfile.TarInfo) -> str | None:
        """The member's normalised name, None for the root itself; raises ContextError."""
        problem = member_problem(member, "the context's directory")
        if problem is not None:
            raise ContextError(problem, member.name)
        name = PurePosixPath(member.name).as_posix()
        if name == ".":
            return None  # the root itself, as `tar -C dir .` writes it
        why = _name_problem(name)
        if why is not None:
            raise ContextError(f"member {shown_name(name)} {why}", name)
        parents = [p.as_posix() for p in PurePosixPath(name).parents if p.as_posix() != "."]
        clash = next((p for p in parents if p in self.files), None)
        if clash is not None:
            raise ContextError(
                f"member {shown_name(name)} is inside {shown_name(clash)}, which is a file", name
            )
        if name in self.files or (member.isfile() and name in self.dirs):
            raise ContextError(f"member {shown_name(name)} appears twice", name)
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise ContextError(f"the context has more than {MAX_MEMBERS} entries", name)
        if member.isdir():
            self.dirs.add(name)
        else:
            self.files.add(name)
            self.unpacked += member.size
            if self.unpacked > self.max_unpacked:
                raise ContextError(
                    f"the context unpacks to more than {self.max_unpacked} bytes (at member "
                    f"{shown_name(name)})",
                    name,
                )
            if len(self.files) > MAX_FILES:
                raise ContextError(f"the context has more than {MAX_FILES} files", name)
        self.dirs.update(parents)
        return name

    def finish(self) -> int:
        if not self.files:
            raise ContextError("the context holds no files")
        return len(self.files)


class _Gunzip(io.RawIOBase):
    """The decompressed bytes of a gzip stream, read incrementally (tarfile streams them once),
    at most `limit` of them; a stream cut short, with a bad CRC or with data after its end is
    an error the first time it shows, so a truncated upload is never half a context."""

    def __init__(self, data: bytes, limit: int) -> None:
        self.source = io.BytesIO(data)
        self.inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing, CRC checked
        self.left = limit
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending and not self.inflate.eof:
            # At most _CHUNK out per step, so a bomb never sits in memory: the rest of its
            # input waits in unconsumed_tail.
            data = self.inflate.unconsumed_tail or self.source.read(_CHUNK)
            if not data:
                raise ContextError(
                    "the context is not a valid .tar.gz: the gzip stream is cut short"
                )
            self.pending = self.inflate.decompress(data, _CHUNK)
            self.left -= len(self.pending)
            if self.left < 0:
                raise ContextError("the context decompresses to more than its size limit allows")
            if self.inflate.eof and (self.inflate.unused_data or self.source.read(1)):
                raise ContextError("the context has data after the end of its gzip stream")
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def drain(self) -> None:
        """Read to the end: the whole stream is verified, not only what tar looked at."""
        while self.read(_CHUNK):
            pass


def _open(stream: _Gunzip) -> tarfile.TarFile:
    return tarfile.open(fileobj=stream, mode="r|")  # streamed: read once, in order


def _tar_limit(max_unpacked: int) -> int:
    """Decompressed bytes a tar of at most `max_unpacked` content bytes may take: a header
    (and a PAX header) and padding per member, plus the end blocks."""
    return max_unpacked + 2048 * MAX_MEMBERS + 10240


def check_context(
    data: bytes, max_bytes: int = MAX_CONTEXT_BYTES, max_unpacked: int = MAX_UNPACKED_BYTES
) -> int:
    """The number of files of the gzip tar `data`; raises ContextError naming the first entry
    that may not be unpacked (see the module docstring for the rules)."""
    if len(data) > max_bytes:
        raise ContextError(
            f"the context is {len(data)} bytes, more than the limit of {max_bytes} bytes"
        )
    if data[:2] != b"\x1f\x8b":
        raise ContextError("the context is not gzip-compressed (send a .tar.gz)")
    checker = _Checker(max_unpacked)
    stream = _Gunzip(data, _tar_limit(max_unpacked))
    try:
        with _open(stream) as tar:
            for member in tar:
                checker.check(member)
        stream.drain()
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        why = str(exc) or type(exc).__name__
        raise ContextError(f"the context is not a valid .tar.gz: {why}") from exc
    return checker.finish()


def context_config(files: int) -> bytes:
    return json.dumps({"files": files}, sort_keys=True, separators=(",", ":")).encode()


def push_context(
    data: bytes,
    registry: str,
    pull_host: str,
    repository: str,
    credentials: Credentials | None = None,
    files: int | None = None,
) -> str:
    """Check `data` and push it as a context artifact to `registry` (as this process reaches
    it), by digest; returns `pull_host/repository@sha256:<manifest digest>`, the reference pods
    (the build Job) pull. Raises ContextError for bad content, PackageError for the registry.
    `files`: the count `check_context` already gave for this `data` (the gateway checks before
    it takes a registry slot), so a 256 MiB archive is not unpacked twice."""
    if files is None:
        files = check_context(data)
    config = context_config(files)
    config_desc = Descriptor(CONTEXT_CONFIG_MEDIA_TYPE, sha256_digest(config), len(config))
    layer = Descriptor(
        CONTEXT_MEDIA_TYPE,
        sha256_digest(data),
        len(data),
        {"org.opencontainers.image.title": TITLE},
    )
    digest = push_artifact(
        registry, repository, (config_desc, config), [(layer, data)], None, credentials
    )
    return str(Reference(pull_host, repository, digest))


def context_layer(config: Descriptor, layers: list[Descriptor], digest: str) -> Descriptor:
    """The one context layer of a manifest, once it is proven to be a build context's."""
    if config.media_type != CONTEXT_CONFIG_MEDIA_TYPE:
        raise ContextError(f"{digest} is not a Nest build context (config {config.media_type})")
    if len(layers) != 1 or layers[0].media_type != CONTEXT_MEDIA_TYPE:
        kinds = [layer.media_type for layer in layers]
        raise ContextError(
            f"a build context has exactly one {CONTEXT_MEDIA_TYPE} layer, not {kinds}"
        )
    if layers[0].size > MAX_CONTEXT_BYTES:
        raise ContextError(
            f"context layer is {layers[0].size} bytes, more than {MAX_CONTEXT_BYTES}"
        )
    return layers[0]


def pull_context(
    ref: str, dest: Path, credentials: Credentials | None = None, timeout: float = 60.0
) -> int:
    """Pull the context `ref` by digest (every byte verified against it) and unpack it into
    `dest` (created; must not exist or be empty); the number of files written. Raises
    ContextError for content that can never be built, PackageError for the registry."""
    parsed = Reference.parse(ref)
    reg = client(parsed.registry, credentials, timeout)
    config_desc, layers = read_manifest(fetch_manifest(reg, parsed), parsed.digest)
    layer = context_layer(config_desc, layers, parsed.digest)
    fetch_config(reg, parsed, config_desc)  # verified; the count is re-derived from the tar
    with tempfile.TemporaryDirectory(prefix="nest-context-") as tmp:
        blob = download_blob(reg, parsed, layer, Path(tmp))
        data = blob.read_bytes()
    check_context(data)
    return unpack_context(data, dest)


def unpack_context(data: bytes, dest: Path) -> int:
    """Write the checked context `data` under `dest`; the number of files written. Files are
    created exclusively (a name twice is refused, not overwritten) and never through a link."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ContextError(f"{dest} is not empty")
    checker, written = _Checker(MAX_UNPACKED_BYTES), 0
    with _open(_Gunzip(data, _tar_limit(MAX_UNPACKED_BYTES))) as tar:
        for member in tar:
            name = checker.check(member)
            if name is None:
                continue
            target = dest / name
            if member.isdir():
                target.mkdir(mode=0o755, parents=True, exist_ok=True)
                continue
            source = tar.extractfile(member)
            assert source is not None  # a regular file always has content
            write_member(source, target, member.mode)
            written += 1
    return written

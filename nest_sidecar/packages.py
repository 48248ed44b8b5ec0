"""Function packages (`source.oci`) in a pool pod: pull by digest, unpack each layer once.

Why a module of its own: a package is not one directory of code but layers that many functions
share (a dependency layer is Lambda's layer, for free), so the unit the pod caches is the layer,
keyed by its digest. Ten functions built on one requirements file run from one unpacked
directory, fetched and unpacked once per pod, whatever order or concurrency they start in:
pulls are single-flight per package, downloads of one registry one at a time (so two packages
sharing a blob never fetch it twice: `sandbox.layers.pull_layers` skips a blob already on disk),
and unpacks single-flight per layer digest.

The verified blobs stay beside the cache (`<cache>/.blobs/sha256/<hex>`), attached to their
unpacked entry: the next package sharing a layer finds its blob and fetches nothing, and the
collector removes blob and directory together, counted together in the budget.

Unpacking trusts nothing the digest does not already prove harmless: only regular files and
directories, no absolute names, no `..`, no links or devices, and a bound on what it unpacks to
(a tarball of zeros compresses a thousandfold). Failures keep the worker's two kinds apart: the
registry, the network or the disk (`CodeFetchFailed`, retried with back-off) against content
that can never work (`InvalidCodeArchive`, permanent: the bytes at a digest never change).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tarfile
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from nest_sidecar.code_cache import CodeCache
from nest_sidecar.errors import CodeFetchFailed, InvalidCodeArchive, describe_exception, shown_name
from sandbox.layers import (
    CODE_MEDIA_TYPE,
    Credentials,
    Package,
    PackageError,
    Reference,
    credentials_for,
    member_problem,
    pull_layers,
    write_member,
)

BLOBS_DIR = ".blobs"
LAYER_PREFIX = "sha256-"  # cache entry of a layer: sha256-<hex>
# What one layer may unpack to (files' declared sizes), and how many members it may have.
MAX_LAYER_BYTES = 1024 * 1024 * 1024
MAX_LAYER_MEMBERS = 200_000
MAX_REMEMBERED_PULLS = 4096  # manifests kept in memory (each a few hundred bytes)
DOCKERCONFIG_TYPE = "kubernetes.io/dockerconfigjson"
DOCKERCONFIG_KEY = ".dockerconfigjson"
LAYOUT_ERRNOS = frozenset(
    {errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EINVAL}
)


@dataclass(frozen=True)
class SecretData:
    """A Secret as the fetcher needs it: its type and its decoded data."""

    type: str
    data: Mapping[str, bytes]


# (namespace, name) -> the Secret, or None when it does not exist. Raises PermissionError when
# the sidecar may not read it (RBAC), anything else for an API failure.
SecretReader = Callable[[str, str], Awaitable[SecretData | None]]
Puller = Callable[[str, Path, Credentials | None], Package]


@dataclass(frozen=True)
class PackageCode:
    """A package ready to run: its code layer's directory, its dependency layers' directories
    (manifest order: each an import root), and its native distributions (`name==version`)."""

    digest: str  # the manifest's hex digest
    code: Path
    dependencies: tuple[Path, ...]
    native: tuple[str, ...]


@dataclass
class PullCounters:
    """What this pod pulled: packages, blobs actually downloaded and layers unpacked."""

    pulls: int = 0
    blobs_fetched: int = 0
    bytes_fetched: int = 0
    unpacks: int = 0
    unpacked: dict[str, int] = field(default_factory=dict)  # layer digest -> unpacks
    fetched: dict[str, int] = field(default_factory=dict)  # blob digest -> downloads


def layer_key(digest: str) -> str:
    """The cache entry of a layer: `sha256-<hex>` (a directory name without a colon)."""
    return LAYER_PREFIX + digest.split(":", 1)[1]


def native_distributions(config: Mapping[str, Any]) -> tuple[str, ...]:
    """`name==version` of the package config's distributions marked native, sorted."""
    found = []
    for dist in config.get("distributions") or []:
        if isinstance(dist, Mapping) and dist.get("native") is True:
            found.append(f"{dist.get('name')}=={dist.get('version')}")
    return tuple(sorted(found))


def unpack_layer(
    blob: Path,
    target: Path,
    *,
    max_bytes: int = MAX_LAYER_BYTES,
    max_members: int = MAX_LAYER_MEMBERS,
) -> int:
    """Unpack the gzip tar `blob` under `target` (which exists, empty), in one streaming pass;
    the bytes of file content written. Raises InvalidCodeArchive for a layer that can never be
    unpacked, CodeFetchFailed when the disk refuses."""
    written = members = 0
    try:
        with tarfile.open(blob, mode="r|*") as tar:
            for member in tar:
                members += 1
                if members > max_members:
                    raise InvalidCodeArchive(f"layer has more than {max_members} members")
                problem = member_problem(member)
                if problem is not None:
                    raise InvalidCodeArchive(problem)
                relative = PurePosixPath(member.name).as_posix()
                dest = target / relative
                try:
                    if member.isdir():
                        dest.mkdir(mode=0o755, parents=True, exist_ok=True)
                        continue
                    written += member.size
                    if written > max_bytes:
                        raise InvalidCodeArchive(f"layer unpacks to more than {max_bytes} bytes")
                    source = tar.extractfile(member)
                    assert source is not None  # a regular file always has content
                    os.chmod(dest, write_member(source, dest, member.mode))  # umask's bits back
                except OSError as exc:
                    raise _write_failed(relative, exc) from exc
    except (tarfile.TarError, EOFError, ValueError, zlib.error) as exc:  # corrupt, NUL in a name
        raise InvalidCodeArchive(f"cannot unpack layer: {describe_exception(exc)}") from exc
    return written


def _write_failed(name: str, exc: OSError) -> InvalidCodeArchive | CodeFetchFailed:
    why = os.strerror(exc.errno) if exc.errno else describe_exception(exc)
    if exc.errno in LAYOUT_ERRNOS:
        return InvalidCodeArchive(f"member {shown_name(name)} cannot be written: {why}")
    return CodeFetchFailed(f"writing member {shown_name(name)}: {why}")


def _default_pull(ref: str, blob_dir: Path, credentials: Credentials | None) -> Package:
    return pull_layers(ref, blob_dir, credentials)


class PackageFetcher:
    """Pulls packages into one pod's code cache; `counters` says what was fetched."""

    def __init__(
        self,
        cache: CodeCache,
        read_secret: SecretReader,
        pull: Puller = _default_pull,
    ) -> None:
        self.cache = cache
        self.read_secret = read_secret
        self.pull = pull
        self.counters = PullCounters()
        self._pulls: dict[tuple[str, str | None], asyncio.Future[Package]] = {}
        self._unpacks: dict[str, asyncio.Future[Path]] = {}
        self._registry_locks: dict[str, asyncio.Lock] = {}
        # (ref, namespace, pull secret) -> what its pull returned. A reference names a digest,
        # so its content never changes: a restart or another sandbox of the same function runs
        # from the cache without asking the registry (which may be down), as the kubelet's
        # IfNotPresent does. Keyed by namespace and secret, so a namespace never runs a
        # package on the strength of another's credentials.
        self._pulled: dict[tuple[str, str, str | None], Package] = {}

    @property
    def blob_dir(self) -> Path:
        return self.cache.root / BLOBS_DIR

    def blob_path(self, digest: str) -> Path:
        return self.blob_dir / "sha256" / digest.split(":", 1)[1]

    def recover(self) -> None:
        """After `cache.recover`: attach each layer's blob to its entry again; blobs of no
        entry go (their directory was collected while the blob's removal was pending)."""
        blobs = self.blob_dir / "sha256"
        if not blobs.is_dir():
            return
        held = {e.digest for e in self.cache.entries}
        for blob in blobs.iterdir():
            key = LAYER_PREFIX + blob.name
            if key in held:
                self.cache.attach(key, blob)
            else:
                with contextlib.suppress(OSError):
                    blob.unlink()

    async def fetch(
        self, ref: str, pull_secret: str | None, namespace: str, user: str | None = None
    ) -> PackageCode:
        """The package `ref`, every layer unpacked and pinned for `user` (a sandbox uid)."""
        known = (ref, namespace, pull_secret)
        package = self._pulled.get(known)
        if package is None or not all(
            self.cache.lookup(layer_key(layer.digest)) for layer in package.layers
        ):
            credentials = await self._credentials(ref, pull_secret, namespace)
            package = await self._pull(ref, credentials, (ref, f"{namespace}/{pull_secret}"))
            self._pulled.pop(known, None)
            self._pulled[known] = package  # newest last: the oldest go first beyond the bound
            while len(self._pulled) > MAX_REMEMBERED_PULLS:
                self._pulled.pop(next(iter(self._pulled)))
        paths: list[Path] = []
        keys: list[str] = []
        for layer in package.layers:
            path = await self._unpack(layer.digest, layer.path)
            paths.append(path)
            keys.append(layer_key(layer.digest))
            if user is not None:  # pinned as soon as it is there: no collection in between
                self.cache.use(user, *keys)
        code, *dependencies = reversed(paths)
        assert package.layers[-1].media_type == CODE_MEDIA_TYPE  # parse_manifest's rule
        return PackageCode(
            package.ref.digest.split(":", 1)[1],
            code,
            tuple(reversed(dependencies)),
            native_distributions(package.config),
        )

    async def _credentials(
        self, ref: str, pull_secret: str | None, namespace: str
    ) -> Credentials | None:
        if pull_secret is None:
            return None
        where = f"Secret {namespace}/{pull_secret}"
        try:
            secret = await self.read_secret(namespace, pull_secret)
        except PermissionError as exc:
            raise CodeFetchFailed(
                f"pulling {ref}: the sidecar may not read the pull secret {where} ({exc}); "
                "grant it with a Role naming that Secret (docs/security.md, pull secrets)"
            ) from exc
        except Exception as exc:  # the API server failed: retried
            raise CodeFetchFailed(
                f"pulling {ref}: reading {where}: {describe_exception(exc).splitlines()[0]}"
            ) from exc
        if secret is None:  # it may be created yet, as for a Pod's imagePullSecrets: retried
            raise CodeFetchFailed(f"pulling {ref}: pull secret {where} not found")
        if secret.type != DOCKERCONFIG_TYPE or DOCKERCONFIG_KEY not in secret.data:
            raise CodeFetchFailed(
                f"pulling {ref}: pull secret {where} is not of type {DOCKERCONFIG_TYPE}"
            )
        try:
            registry = Reference.parse(ref).registry
            return credentials_for(secret.data[DOCKERCONFIG_KEY], registry)
        except PackageError as exc:
            raise CodeFetchFailed(f"pulling {ref}: pull secret {where}: {exc}") from exc

    async def _pull(
        self, ref: str, credentials: Credentials | None, key: tuple[str, str | None]
    ) -> Package:
        """Single-flight per (ref, secret), shielded: a sandbox deleted mid-pull does not cancel
        the pull others wait on (nor leave a thread downloading behind a released lock)."""
        flight = self._pulls.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._pull_now(ref, credentials))
            self._pulls[key] = flight
            flight.add_done_callback(lambda _: self._pulls.pop(key, None))
        return await asyncio.shield(flight)

    async def _pull_now(self, ref: str, credentials: Credentials | None) -> Package:
        try:
            registry = Reference.parse(ref).registry
        except PackageError as exc:
            raise InvalidCodeArchive(f"pulling {ref}: {exc}") from exc
        lock = self._registry_locks.setdefault(registry, asyncio.Lock())
        async with lock:  # one download at a time per registry: a shared blob once
            before = self._present()
            try:
                package = await asyncio.to_thread(self.pull, ref, self.blob_dir, credentials)
            except PackageError as exc:
                kind = InvalidCodeArchive if exc.permanent else CodeFetchFailed
                raise kind(f"pulling {ref}: {exc}") from exc
            except OSError as exc:  # the blob directory: a full disk, say
                raise CodeFetchFailed(f"pulling {ref}: {describe_exception(exc)}") from exc
        self.counters.pulls += 1
        for layer in package.layers:
            if layer.path.name not in before:
                self.counters.blobs_fetched += 1
                self.counters.bytes_fetched += layer.size
                self.counters.fetched[layer.digest] = self.counters.fetched.get(layer.digest, 0) + 1
        return package

    def _present(self) -> set[str]:
        with contextlib.suppress(OSError):
            return {p.name for p in (self.blob_dir / "sha256").iterdir()}
        return set()

    async def _unpack(self, digest: str, blob: Path) -> Path:
        """The layer's directory: looked up, else unpacked once however many ask at once."""
        key = layer_key(digest)
        found = self.cache.lookup(key)
        if found is not None:
            self.cache.attach(key, blob)
            return found
        flight = self._unpacks.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._unpack_now(key, digest, blob))
            self._unpacks[key] = flight
            flight.add_done_callback(lambda _: self._unpacks.pop(key, None))
        return await asyncio.shield(flight)

    async def _unpack_now(self, key: str, digest: str, blob: Path) -> Path:
        try:
            path = await self.cache.put_async(key, lambda d: unpack_layer(blob, d))
        except InvalidCodeArchive as exc:
            raise InvalidCodeArchive(f"layer {digest}: {exc}") from exc
        except CodeFetchFailed as exc:
            raise CodeFetchFailed(f"layer {digest}: {exc}") from exc
        except OSError as exc:  # the cache directory itself
            raise CodeFetchFailed(
                f"layer {digest}: code cache {self.cache.root}: {describe_exception(exc)}"
            ) from exc
        self.cache.attach(key, blob)
        self.counters.unpacks += 1
        self.counters.unpacked[digest] = self.counters.unpacked.get(digest, 0) + 1
        return path

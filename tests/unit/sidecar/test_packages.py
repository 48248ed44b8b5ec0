"""Function packages in a pod: safe unpacking, one unpack per layer, pins, error kinds.

The puller is a fake with `pull_layers`' contract (verified blobs written as
blob_dir/sha256/<hex>, a blob already there not fetched again); the real registry is in
tests/integration/test_package_sandboxes.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest

from crds.sandbox import PERMANENT_FAILURE_REASONS, CodeSource
from nest_sidecar.code_cache import PINS_DIR, CodeCache
from nest_sidecar.errors import CodeFetchFailed, InvalidCodeArchive
from nest_sidecar.fetcher import CodeFetcher, CodeRef
from nest_sidecar.main import PullCollector
from nest_sidecar.packages import (
    LAYER_PREFIX,
    PackageFetcher,
    PullCounters,
    SecretData,
    layer_key,
    native_distributions,
    unpack_layer,
)
from nest_sidecar.server import SidecarMetrics
from nest_sidecar.worker import Backoff, PodIdentity, SandboxWorker
from sandbox.api import CreateSandbox, SandboxInfo
from sandbox.layers import (
    CODE_MEDIA_TYPE,
    DEPENDENCIES_MEDIA_TYPE,
    Credentials,
    Package,
    PackageError,
    PulledLayer,
    Reference,
)

REGISTRY = "127.0.0.1:5000"


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def file_member(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def layer(files: Mapping[str, str]) -> bytes:
    return tar_gz([file_member(name, text.encode()) for name, text in sorted(files.items())])


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    """Packages by reference, pulled with pull_layers' contract; counts blob downloads."""

    def __init__(self) -> None:
        self.packages: dict[str, tuple[dict[str, Any], list[tuple[str, bytes]]]] = {}
        self.downloads: dict[str, int] = {}
        self.failure: PackageError | None = None
        self.credentials: list[Credentials | None] = []
        self._lock = threading.Lock()

    def add(self, name: str, deps: list[bytes], code: bytes, natives: tuple[str, ...] = ()) -> str:
        config = {"distributions": [{"name": n, "version": "1.0", "native": True} for n in natives]}
        layers = [(DEPENDENCIES_MEDIA_TYPE, d) for d in deps] + [(CODE_MEDIA_TYPE, code)]
        manifest = json.dumps([name, [digest(b) for _, b in layers]]).encode()
        ref = f"{REGISTRY}/nest/{name}@{digest(manifest)}"
        self.packages[ref] = (config, layers)
        return ref

    def pull(self, ref: str, blob_dir: Path, credentials: Credentials | None) -> Package:
        self.credentials.append(credentials)
        if self.failure is not None:
            raise self.failure
        config, layers = self.packages[ref]
        pulled = []
        for media, data in layers:
            d = digest(data)
            path = blob_dir / "sha256" / d.split(":", 1)[1]
            if not path.exists():
                with self._lock:
                    self.downloads[d] = self.downloads.get(d, 0) + 1
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            pulled.append(PulledLayer(d, media, len(data), path))
        return Package(Reference.parse(ref), config, pulled)


async def no_secret(namespace: str, name: str) -> SecretData | None:
    return None


def fetcher(tmp_path: Path, registry: FakeRegistry, read_secret: Any = no_secret) -> PackageFetcher:
    cache = CodeCache(tmp_path / "cache", budget_bytes=0, idle_seconds=0.0)
    return PackageFetcher(cache, read_secret, registry.pull)


# -- unpacking ---------------------------------------------------------------------------------


def test_a_layer_unpacks_its_files_and_directories(tmp_path: Path) -> None:
    dir_info = tarfile.TarInfo("pkg")
    dir_info.type = tarfile.DIRTYPE
    blob = tmp_path / "blob"
    blob.write_bytes(tar_gz([(dir_info, None), file_member("pkg/__init__.py", b"X = 1\n"),
                             file_member("tool.py", b"", 0o755)]))  # fmt: skip
    (tmp_path / "out").mkdir()
    assert unpack_layer(blob, tmp_path / "out") == 6
    assert (tmp_path / "out" / "pkg" / "__init__.py").read_text() == "X = 1\n"
    assert (tmp_path / "out" / "tool.py").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    ("members", "said"),
    [
        ([file_member("/etc/passwd", b"x")], "would escape"),
        ([file_member("../up.py", b"x")], "would escape"),
        ([file_member("a/../../up.py", b"x")], "would escape"),
        ([special("link", tarfile.SYMTYPE, "/etc/passwd")], "is a link"),
        ([file_member("a", b"x"), special("b", tarfile.LNKTYPE, "a")], "is a link"),
        ([special("fifo", tarfile.FIFOTYPE)], "not a regular file or directory"),
        ([special("dev", tarfile.CHRTYPE)], "not a regular file or directory"),
        ([file_member("twice.py", b"1"), file_member("twice.py", b"2")], "cannot be written"),
        ([file_member("big.py", b"x" * 2048)], "more than 1024 bytes"),
    ],
)
def test_a_layer_that_could_escape_or_surprise_is_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], said: str
) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(tar_gz(members))
    (tmp_path / "out").mkdir()
    with pytest.raises(InvalidCodeArchive, match=said):
        unpack_layer(blob, tmp_path / "out", max_bytes=1024)
    assert not (tmp_path / "etc").exists() and not (tmp_path / "up.py").exists()


def test_a_corrupt_layer_is_an_invalid_archive(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(layer({"a.py": "x"})[:40])
    (tmp_path / "out").mkdir()
    with pytest.raises(InvalidCodeArchive, match="cannot unpack layer"):
        unpack_layer(blob, tmp_path / "out")


def test_native_distributions_are_named_with_their_versions() -> None:
    config = {"distributions": [{"name": "six", "version": "1.16.0", "native": False},
                                {"name": "numpy", "version": "2.1.0", "native": True}]}  # fmt: skip
    assert native_distributions(config) == ("numpy==2.1.0",)
    assert native_distributions({}) == ()


# -- sharing -----------------------------------------------------------------------------------


async def test_ten_packages_sharing_a_layer_fetch_and_unpack_it_once(tmp_path: Path) -> None:
    registry = FakeRegistry()
    shared = layer({"dep/__init__.py": "VERSION = 1\n"})
    refs = [registry.add(f"fn{i}", [shared], layer({"main.py": f"N = {i}\n"})) for i in range(10)]
    packages = fetcher(tmp_path, registry)
    got = await asyncio.gather(
        *(packages.fetch(ref, None, "ns", user=f"u{i}") for i, ref in enumerate(refs))
    )
    shared_dir = packages.cache.path(layer_key(digest(shared)))
    assert {code.dependencies for code in got} == {(shared_dir,)}
    assert len({code.code for code in got}) == 10
    assert registry.downloads[digest(shared)] == 1
    assert packages.counters.fetched[digest(shared)] == 1
    assert packages.counters.unpacked[digest(shared)] == 1
    assert packages.counters.blobs_fetched == 11 and packages.counters.pulls == 10
    assert (got[3].code / "main.py").read_text() == "N = 3\n"
    assert (got[3].dependencies[0] / "dep" / "__init__.py").read_text() == "VERSION = 1\n"

    again = await packages.fetch(refs[0], None, "ns", user="u-late")
    assert again == got[0]
    assert registry.downloads[digest(shared)] == 1 and packages.counters.unpacks == 11


async def test_a_package_in_the_cache_starts_again_without_the_registry(tmp_path: Path) -> None:
    registry = FakeRegistry()
    ref = registry.add("a", [layer({"dep.py": ""})], layer({"main.py": ""}))
    packages = fetcher(tmp_path, registry)
    first = await packages.fetch(ref, None, "ns", user="u1")
    registry.failure = PackageError("GET http://x/v2/: connection refused", permanent=False)
    assert await packages.fetch(ref, None, "ns", user="u2") == first  # a restart, a replica
    assert packages.counters.pulls == 1
    # Another namespace (or another pull secret) proves its own access: it asks the registry.
    with pytest.raises(CodeFetchFailed, match="connection refused"):
        await packages.fetch(ref, None, "other-ns", user="u3")


async def test_every_layer_stays_pinned_while_a_sandbox_uses_it(tmp_path: Path) -> None:
    registry = FakeRegistry()
    shared = layer({"dep.py": "X = 1\n"})
    a = registry.add("a", [shared], layer({"main.py": "A = 1\n"}))
    b = registry.add("b", [shared], layer({"main.py": "B = 1\n"}))
    packages = fetcher(tmp_path, registry)  # budget 0, idle 0: everything unpinned goes
    cache = packages.cache
    code_a = await packages.fetch(a, None, "ns", user="ua")
    code_b = await packages.fetch(b, None, "ns", user="ub")
    assert cache.pins("ua") == {layer_key(digest(shared)), code_a.code.name}

    assert await cache.collect() == []
    cache.release("ua")
    assert await cache.collect() == [code_a.code.name]
    assert code_b.dependencies[0].is_dir()  # still b's
    cache.release("ub")
    removed = set(await cache.collect())
    assert removed == {code_b.code.name, layer_key(digest(shared))}
    assert not packages.blob_path(digest(shared)).exists()  # the blob went with its directory

    # Gone from the pod: the next pull downloads and unpacks it again.
    await packages.fetch(a, None, "ns", user="ua")
    assert registry.downloads[digest(shared)] == 2


async def test_pins_and_blobs_are_adopted_by_a_restarted_sidecar(tmp_path: Path) -> None:
    registry = FakeRegistry()
    ref = registry.add("a", [layer({"dep.py": ""})], layer({"main.py": ""}))
    first = fetcher(tmp_path, registry)
    code = await first.fetch(ref, None, "ns", user="ua")
    orphan = first.blob_dir / "sha256" / ("f" * 64)
    orphan.write_bytes(b"left by a crash")
    pin = (first.cache.root / PINS_DIR / "ua").read_text().split()
    assert len(pin) == 2 and all(p.startswith(LAYER_PREFIX) for p in pin)

    second = fetcher(tmp_path, registry)
    second.cache.recover()
    second.recover()
    assert second.cache.pins("ua") == set(pin)
    assert not orphan.exists()
    assert await second.cache.collect() == []
    second.cache.release("ua")
    assert set(await second.cache.collect()) == set(pin)
    assert not any((second.blob_dir / "sha256").iterdir())
    assert not code.code.exists()


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("permanent", "kind"), [(True, InvalidCodeArchive), (False, CodeFetchFailed)]
)
async def test_a_failed_pull_is_permanent_only_when_the_content_is_wrong(
    tmp_path: Path, permanent: bool, kind: type[Exception]
) -> None:
    registry = FakeRegistry()
    ref = registry.add("a", [], layer({"main.py": ""}))
    registry.failure = PackageError("GET http://x/blobs/sha256:abc: HTTP 404", permanent)
    with pytest.raises(kind) as caught:
        await fetcher(tmp_path, registry).fetch(ref, None, "ns")
    assert ref in str(caught.value) and "HTTP 404" in str(caught.value)
    assert (caught.value.reason in PERMANENT_FAILURE_REASONS) is permanent  # type: ignore[attr-defined]


async def test_a_layer_that_cannot_be_unpacked_is_permanent_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    registry = FakeRegistry()
    bad = tar_gz([special("evil", tarfile.SYMTYPE, "/etc")])
    ref = registry.add("a", [bad], layer({"main.py": ""}))
    packages = fetcher(tmp_path, registry)
    with pytest.raises(InvalidCodeArchive, match=f"layer {digest(bad)}: member 'evil' is a link"):
        await packages.fetch(ref, None, "ns", user="ua")
    assert [e.digest for e in packages.cache.entries] == []
    assert not [p for p in packages.cache.root.iterdir() if p.name.startswith(".partial")]


def secret_reader(secret: SecretData | Exception | None) -> Any:
    async def read(namespace: str, name: str) -> SecretData | None:
        if isinstance(secret, Exception):
            raise secret
        return secret

    return read


DOCKERCONFIG = json.dumps({"auths": {REGISTRY: {"username": "u", "password": "p"}}}).encode()


@pytest.mark.parametrize(
    ("secret", "said"),
    [
        (None, "pull secret Secret ns/creds not found"),
        (PermissionError("forbidden"), "may not read the pull secret Secret ns/creds"),
        (RuntimeError("500 Internal"), "reading Secret ns/creds: RuntimeError: 500 Internal"),
        (SecretData("Opaque", {"x": b""}), "is not of type kubernetes.io/dockerconfigjson"),
        (SecretData("kubernetes.io/dockerconfigjson", {".dockerconfigjson": b"{"}), "not valid"),
    ],
)
async def test_pull_secret_problems_are_retried_and_named(
    tmp_path: Path, secret: SecretData | Exception | None, said: str
) -> None:
    registry = FakeRegistry()
    ref = registry.add("a", [], layer({"main.py": ""}))
    with pytest.raises(CodeFetchFailed, match=said) as caught:
        await fetcher(tmp_path, registry, secret_reader(secret)).fetch(ref, "creds", "ns")
    assert ref in str(caught.value)
    assert registry.credentials == []  # nothing pulled without the credentials


async def test_the_pull_secret_credentials_are_used(tmp_path: Path) -> None:
    registry = FakeRegistry()
    ref = registry.add("a", [], layer({"main.py": ""}))
    secret = SecretData("kubernetes.io/dockerconfigjson", {".dockerconfigjson": DOCKERCONFIG})
    await fetcher(tmp_path, registry, secret_reader(secret)).fetch(ref, "creds", "ns")
    assert registry.credentials == [Credentials("u", "p")]


# -- the code source and the runtime request -------------------------------------------------


class RecordingRuntime:
    def __init__(self) -> None:
        self.requests: list[CreateSandbox] = []

    async def create(self, request: CreateSandbox) -> SandboxInfo:
        self.requests.append(request)
        return SandboxInfo(
            id=request.id, isolation="subprocess", state="Running", reason="", message="",
            pid=1, exit_code=None, signal=None, created_at=0.0,
            started_at=0.0, finished_at=None,
        )  # fmt: skip

    async def remove(self, sandbox_id: str, grace_seconds: float) -> None:
        return None


class NoKube:
    async def release_finalizer(self, obj: Mapping[str, Any]) -> None:
        return None

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        return None


async def test_an_oci_sandbox_is_created_with_its_dependency_layers(tmp_path: Path) -> None:
    registry = FakeRegistry()
    deps = [layer({"one.py": ""}), layer({"two.py": ""})]
    ref = registry.add("a", deps, layer({"main.py": ""}), natives=("numpy",))
    packages = fetcher(tmp_path, registry)

    async def no_configmaps(namespace: str, name: str) -> None:
        return None

    obj = {
        "metadata": {"uid": "u1", "name": "s1", "namespace": "ns", "generation": 1,
                     "finalizers": ["nest.sandbox.dev/sidecar"]},
        "spec": {"podName": "pool-0", "function": {
            "handler": "main:handler", "source": {"oci": {"ref": ref}}}},
    }  # fmt: skip
    runtime = RecordingRuntime()
    async with aiohttp.ClientSession() as http:
        code_fetcher = CodeFetcher(packages.cache, no_configmaps, http, packages=packages)
        code = await code_fetcher.fetch(CodeSource.model_validate({"oci": {"ref": ref}}), "ns")
        assert isinstance(code, CodeRef) and code.native_distributions == ("numpy==1.0",)
        assert [p.name for p in code.dependency_paths] == [layer_key(digest(d)) for d in deps]
        worker = SandboxWorker(
            obj, runtime=runtime, fetcher=code_fetcher, kube=NoKube(),  # type: ignore[arg-type]
            report=lambda o, observed: None, pod=PodIdentity("pool-0", "127.0.0.9", 8080),
            backoff=Backoff(),
        )  # fmt: skip
        task = asyncio.create_task(worker.run())
        try:
            async with asyncio.timeout(10):
                while not runtime.requests:
                    await asyncio.sleep(0.01)  # polling the fake runtime, with a deadline
        finally:
            task.cancel()
    (request,) = runtime.requests
    assert request.code_dir == str(code.path)
    assert request.dependency_paths == [str(p) for p in code.dependency_paths]
    assert request.native_distributions == ["numpy==1.0"]
    assert packages.cache.pins("u1") == {p.name for p in (code.path, *code.dependency_paths)}


# -- the pull counters on /metrics (the Secret read: test_kube_shell.py) ----------------------


def test_the_pull_counters_are_on_the_sidecars_metrics() -> None:
    metrics = SidecarMetrics()
    counters = PullCounters(pulls=3, blobs_fetched=2, bytes_fetched=10)
    counters.fetched["sha256:aa"] = 1
    counters.unpacked["sha256:aa"] = 1
    metrics.registry.register(PullCollector(counters))
    text = generate_latest(metrics.registry).decode()
    assert 'nest_sidecar_layer_blob_fetches_total{digest="sha256:aa"} 1.0' in text
    assert 'nest_sidecar_layer_unpacks_total{digest="sha256:aa"} 1.0' in text
    assert "nest_sidecar_package_pulls_total 3.0" in text
    counters.fetched["sha256:aa"] = 2  # read when scraped, not when registered
    assert 'fetches_total{digest="sha256:aa"} 2.0' in generate_latest(metrics.registry).decode()

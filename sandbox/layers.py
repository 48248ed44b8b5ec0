"""Function packages as OCI artifacts: the format, and the verified pull by digest.

`nest deploy DIR` (nest.package) builds a package and pushes it; the sidecar pulls it into its
pod. Both sides import this module, so the media types and the rules of the format are written
once. It lives in `sandbox`, a lower layer the CLI and the sidecar may both import, and it talks
to registries only through oras-py (the OCI distribution API), never a protocol of our own.

The artifact (an OCI image manifest, schemaVersion 2):
- config (CONFIG_MEDIA_TYPE): JSON with `python` (the target the dependencies were built for:
  implementation, version, abi, platforms), `requirements` (as declared) and `distributions`
  (what was installed: name, version, and `native` when the wheel is not pure Python).
- layers, in order: zero or more DEPENDENCIES_MEDIA_TYPE, then exactly one CODE_MEDIA_TYPE.
  Each layer is a gzip-compressed tar of regular files and directories only (no links, devices
  or absolute paths; modes 0644/0755, uid/gid 0, mtime 0), so that the same input always gives
  the same digest and one layer is one blob for every function that shares it. A dependency
  layer's root is an import root (put it on sys.path: it holds what `pip install --target`
  wrote, without `bin/` and without .pyc files, which are not reproducible: compile after
  unpacking if wanted); the code layer's root is the function's code directory.

Both directions are here, so the CLI, the gateway and the build Job push the same way
(`push_artifact`: blobs the registry holds are not sent again, the manifest's canonical bytes
fix its digest before the registry confirms it) and every puller verifies the same way; the rule
for which tar members may be unpacked (`member_problem`) is shared by the sidecar's layers and
the build contexts of `sandbox.context`.

Pull contract for the sidecar: `pull_layers(ref, blob_dir)` returns the config and the layers'
blobs as verified files `blob_dir/sha256/<hex>`; a blob already there is not fetched again, so
a pod fetches a layer shared by many functions once. Unpacking (and its cache budget) is the
caller's. Plain HTTP is used only for loopback registries (as Docker does for 127.0.0.0/8), and
integrity never depends on the transport: every byte is checked against the digest chain.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import ipaddress
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from crds.validation import OCI_REF_PATTERN

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.nest.function.config.v1+json"
DEPENDENCIES_MEDIA_TYPE = "application/vnd.nest.function.dependencies.v1.tar+gzip"
CODE_MEDIA_TYPE = "application/vnd.nest.function.code.v1.tar+gzip"
LAYER_MEDIA_TYPES = frozenset({DEPENDENCIES_MEDIA_TYPE, CODE_MEDIA_TYPE})
# The layers' file names for `oras pull` (its title annotation); Nest itself keys by digest.
TITLE_ANNOTATION = "org.opencontainers.image.title"
LAYER_TITLES = {DEPENDENCIES_MEDIA_TYPE: "dependencies.tar.gz", CODE_MEDIA_TYPE: "code.tar.gz"}

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution's own limit for a manifest
MAX_CONFIG_BYTES = 1024 * 1024
MAX_BLOB_BYTES = 2 * 1024 * 1024 * 1024
CHUNKED_ABOVE = 32 * 1024 * 1024  # larger blobs go up in chunks, not read into memory at once
_REF_RE = re.compile(OCI_REF_PATTERN)
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class PackageError(Exception):
    """A package cannot be pulled: bad reference, unreachable registry, or content that does not
    match its digest or the format. `permanent` is True when retrying cannot help (the bytes at
    a digest never change), False for transport and registry failures."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Reference:
    """`registry/repository@sha256:<hex>`, split."""

    registry: str
    repository: str
    digest: str

    @classmethod
    def parse(cls, ref: str) -> Reference:
        if not _REF_RE.match(ref):
            raise PackageError(
                f"{ref!r} is not a registry/repository@sha256:<digest> reference", permanent=True
            )
        name, digest = ref.rsplit("@", 1)
        registry, repository = name.split("/", 1)
        return cls(registry, repository, digest)

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}@{self.digest}"


@dataclass(frozen=True)
class Descriptor:
    """One entry of a manifest: what a blob is, its digest and its size."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True)
class PulledLayer:
    digest: str
    media_type: str
    size: int
    path: Path  # the verified blob: blob_dir/sha256/<hex>


@dataclass(frozen=True)
class Package:
    ref: Reference
    config: dict[str, Any]
    layers: list[PulledLayer]  # manifest order: dependency layers, then the code layer


def plain_http(registry: str) -> bool:
    """Whether to speak plain HTTP to `registry`: only on loopback, where it never leaves the
    machine (Docker's rule for 127.0.0.0/8)."""
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry[1:]
    host = host.split("]", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_json(config: Descriptor, layers: list[Descriptor]) -> dict[str, Any]:
    """The manifest the builder pushes (no timestamps: same package, same manifest digest)."""
    return {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }


def _descriptor(value: object, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise PackageError(f"{where} is not a descriptor", permanent=True)
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if (
        not isinstance(media_type, str)
        or not isinstance(digest, str)
        or not _DIGEST_RE.match(digest)
    ):
        raise PackageError(f"{where} needs a mediaType and a sha256 digest", permanent=True)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_BLOB_BYTES:
        raise PackageError(f"{where} has size {size!r}, not 0..{MAX_BLOB_BYTES}", permanent=True)
    return Descriptor(media_type, digest, size)


def read_manifest(raw: bytes, digest: str) -> tuple[Descriptor, list[Descriptor]]:
    """The config and layer descriptors of an OCI image manifest fetched for `digest`, once its
    bytes are proven to be that digest's (any artifact: packages and build contexts alike)."""
    if sha256_digest(raw) != digest:
        raise PackageError(f"the manifest served for {digest} has another digest", permanent=True)
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise PackageError(f"manifest {digest} is not JSON: {exc}", permanent=True) from exc
    if not isinstance(manifest, dict) or manifest.get("schemaVersion") != 2:
        raise PackageError(f"manifest {digest} is not an OCI image manifest", permanent=True)
    if manifest.get("mediaType", MANIFEST_MEDIA_TYPE) != MANIFEST_MEDIA_TYPE:
        raise PackageError(f"manifest {digest} is a {manifest.get('mediaType')}", permanent=True)
    config = _descriptor(manifest.get("config"), "config")
    listed = manifest.get("layers")
    if not isinstance(listed, list):
        raise PackageError(f"manifest {digest} has no layers list", permanent=True)
    return config, [_descriptor(d, f"layers[{i}]") for i, d in enumerate(listed)]


def parse_manifest(raw: bytes, digest: str) -> tuple[Descriptor, list[Descriptor]]:
    """The config and layer descriptors of a manifest fetched for `digest`, once its bytes are
    proven to be that digest's and it has the shape of a Nest package."""
    config, layers = read_manifest(raw, digest)
    if config.media_type != CONFIG_MEDIA_TYPE:
        raise PackageError(
            f"{digest} is not a Nest function package (config {config.media_type})",
            permanent=True,
        )
    kinds = [layer.media_type for layer in layers]
    unknown = sorted(set(kinds) - LAYER_MEDIA_TYPES)
    if unknown:
        raise PackageError(f"unknown layer media types {unknown}", permanent=True)
    if kinds.count(CODE_MEDIA_TYPE) != 1 or kinds[-1] != CODE_MEDIA_TYPE:
        raise PackageError("a package has exactly one code layer, the last", permanent=True)
    return config, layers


def shown_name(name: str, keep: int = 60) -> str:
    """A file name for a message: quoted, and shortened when long (its length said instead)."""
    if len(name) <= keep:
        return repr(name)
    return repr(f"{name[: keep - 20]}…{name[-12:]}") + f" ({len(name.encode())} bytes)"


def member_problem(member: tarfile.TarInfo, where: str = "the layer's directory") -> str | None:
    """Why a tar member may not be unpacked (None: it may): only regular files and
    directories, by relative names that stay inside `where`."""
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not name or "\0" in name:
        return f"member {shown_name(name)} would escape {where}"
    if member.issym() or member.islnk():
        return f"member {shown_name(name)} is a link"
    if not (member.isfile() or member.isdir()):
        return f"member {shown_name(name)} is not a regular file or directory"
    if not path.parts and not member.isdir():  # "." as a file
        return f"member {shown_name(name)} would escape {where}"
    return None


def write_member(source: IO[bytes], dest: Path, tar_mode: int) -> int:
    """Write one checked regular member (`member_problem` said None) to the new file `dest`;
    its mode, 0755 when the owner may execute it in the archive, else 0644, is returned
    (the umask may have taken bits: callers that keep them chmod). O_EXCL: a name twice is
    refused, never silently the last one's content; O_NOFOLLOW: links were refused already."""
    mode = 0o755 if tar_mode & 0o100 else 0o644
    dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
    return mode


def credentials_for(dockerconfigjson: bytes, registry: str) -> Credentials | None:
    """The credentials a kubernetes.io/dockerconfigjson Secret's `.dockerconfigjson` holds for
    `registry` (an `auth` of base64 user:password, or username and password), else None."""
    try:
        auths = json.loads(dockerconfigjson).get("auths") or {}
        entry = auths.get(registry) or auths.get(f"https://{registry}") or {}
        if entry.get("username") is not None and entry.get("password") is not None:
            return Credentials(str(entry["username"]), str(entry["password"]))
        if entry.get("auth"):
            user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return Credentials(user, password) if sep else None
    except (ValueError, AttributeError, binascii.Error, UnicodeDecodeError):
        raise PackageError("the pull secret is not valid .dockerconfigjson", True) from None
    return None


def client(registry: str, credentials: Credentials | None = None, timeout: float = 30.0) -> Any:
    """An oras-py registry client for `registry`, failing fast: every request has a timeout,
    and oras' own retry loop (sleeps of up to minutes) is skipped: callers back off themselves."""
    import oras.provider  # imported here: the sidecar pays for requests only when it pulls

    backend = "token"
    if credentials is not None and _challenge(registry, timeout).lower().startswith("basic"):
        backend = "basic"  # htpasswd registries (distribution's own auth) ask for Basic
    reg = oras.provider.Registry(
        hostname=registry, insecure=plain_http(registry), auth_backend=backend
    )
    if credentials is not None:
        reg.auth.set_basic_auth(credentials.username, credentials.password)
    reg.session.request = functools.partial(reg.session.request, timeout=timeout)
    unretried = getattr(oras.provider.Registry.do_request, "__wrapped__", None)
    if unretried is not None:
        reg.do_request = functools.partial(unretried, reg)
    return reg


def _challenge(registry: str, timeout: float) -> str:
    """The registry's WWW-Authenticate challenge on its version check ("" when it has none):
    oras-py has one backend for Bearer token services and another for Basic."""
    import requests

    scheme = "http" if plain_http(registry) else "https"
    try:
        response = requests.get(f"{scheme}://{registry}/v2/", timeout=timeout)
    except requests.RequestException as exc:
        raise PackageError(f"registry {registry} is unreachable: {exc}", permanent=False) from exc
    return str(response.headers.get("Www-Authenticate", ""))


def _fetch(reg: Any, url: str, accept: str | None = None, stream: bool = False) -> Any:
    import requests

    headers = {"Accept": accept} if accept else {}
    try:
        response = reg.do_request(url, "GET", headers=headers, stream=stream)
    except (requests.RequestException, ValueError) as exc:
        raise PackageError(f"GET {url}: {exc}", permanent=False) from exc
    if response.status_code != 200:
        # 404 may be a registry being restored; only digests mismatching are final.
        raise PackageError(f"GET {url}: HTTP {response.status_code}", permanent=False)
    return response


def download_blob(reg: Any, ref: Reference, layer: Descriptor, blob_dir: Path) -> Path:
    """Stream one blob into a temporary file, verify size and digest, rename it into place."""
    import requests

    final = blob_dir / "sha256" / layer.digest.split(":", 1)[1]
    if final.exists():
        return final  # only ever renamed into place after verification
    final.parent.mkdir(parents=True, exist_ok=True)
    url = f"{reg.prefix}://{ref.registry}/v2/{ref.repository}/blobs/{layer.digest}"
    response = _fetch(reg, url, stream=True)
    h, size = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out, response:
            for chunk in response.iter_content(chunk_size=1024 * 1024):
                size += len(chunk)
                if size > layer.size:
                    raise PackageError(f"blob {layer.digest} is larger than declared", True)
                h.update(chunk)
                out.write(chunk)
        if size != layer.size or "sha256:" + h.hexdigest() != layer.digest:
            raise PackageError(f"blob {layer.digest} does not match its digest", permanent=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
    except requests.RequestException as exc:
        raise PackageError(f"GET {url}: {exc}", permanent=False) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return final


def fetch_manifest(reg: Any, ref: Reference) -> bytes:
    """The manifest's bytes at `ref`'s digest (verified by the caller's `read_manifest`)."""
    url = f"{reg.prefix}://{ref.registry}/v2/{ref.repository}/manifests/{ref.digest}"
    raw = bytes(_fetch(reg, url, accept=MANIFEST_MEDIA_TYPE).content)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise PackageError(f"manifest {ref.digest} is larger than {MAX_MANIFEST_BYTES}", True)
    return raw


def fetch_config(reg: Any, ref: Reference, config: Descriptor) -> dict[str, Any]:
    """The config blob `config` describes, verified and decoded (a JSON object)."""
    if config.size > MAX_CONFIG_BYTES:
        raise PackageError(f"config {config.digest} is larger than {MAX_CONFIG_BYTES}", True)
    url = f"{reg.prefix}://{ref.registry}/v2/{ref.repository}/blobs/{config.digest}"
    raw = _fetch(reg, url).content
    if sha256_digest(raw) != config.digest:
        raise PackageError(f"config {config.digest} does not match its digest", True)
    try:
        found = json.loads(raw)
    except ValueError as exc:
        raise PackageError(f"config {config.digest} is not JSON", permanent=True) from exc
    if not isinstance(found, dict):
        raise PackageError(f"config {config.digest} is not a JSON object", permanent=True)
    return found


def pull_layers(
    ref: str, blob_dir: Path, credentials: Credentials | None = None, timeout: float = 30.0
) -> Package:
    """Pull the package `ref` by digest: its verified config and layer blobs (see the module
    docstring for the contract). Raises PackageError (`.permanent` says whether to retry)."""
    parsed = Reference.parse(ref)
    reg = client(parsed.registry, credentials, timeout)
    config_desc, layers = parse_manifest(fetch_manifest(reg, parsed), parsed.digest)
    config = fetch_config(reg, parsed, config_desc)
    pulled = [
        PulledLayer(d.digest, d.media_type, d.size, download_blob(reg, parsed, d, blob_dir))
        for d in layers
    ]
    return Package(parsed, config, pulled)


def canonical_manifest(config: Descriptor, layers: Sequence[Descriptor]) -> bytes:
    """A manifest's bytes as pushed: canonical JSON (sorted keys, no spaces), one digest."""
    doc = manifest_json(config, list(layers))
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


Blob = tuple[Descriptor, Path | bytes]  # what to upload: its descriptor, a file or the bytes


def push_artifact(
    registry: str,
    repository: str,
    config: Blob,
    layers: Sequence[Blob],
    tag: str | None = None,
    credentials: Credentials | None = None,
    say: Callable[[str], None] | None = None,
    timeout: float = 120.0,
) -> str:
    """Push the blobs (those the registry lacks) and the manifest naming them to `registry`
    (as this process reaches it); the manifest goes under `tag`, else by its digest. Returns
    the manifest's digest. Raises PackageError (not permanent: registries fail and recover)."""
    manifest = canonical_manifest(config[0], [d for d, _ in layers])
    digest = sha256_digest(manifest)
    reg = client(registry, credentials, timeout)
    container = reg.get_container(f"{registry}/{repository}" + (f":{tag}" if tag else f"@{digest}"))
    try:
        with tempfile.TemporaryDirectory(prefix="nest-push-") as tmp:
            for i, (desc, content) in enumerate([config, *layers]):
                if isinstance(content, bytes):  # oras-py uploads blobs from files
                    path = Path(tmp) / f"blob-{i}"
                    path.write_bytes(content)
                    content = path
                _upload(reg, container, content, desc, say if i else None)
        url = f"{reg.prefix}://{container.manifest_url()}"
        response = reg.do_request(
            url, "PUT", data=manifest, headers={"Content-Type": MANIFEST_MEDIA_TYPE}
        )
    except PackageError:
        raise
    except Exception as exc:  # requests and oras errors: connection refused, HTTP errors
        raise PackageError(f"cannot push to {registry}: {exc}", permanent=False) from exc
    if response.status_code not in (200, 201):
        raise PackageError(
            f"{registry} refused the manifest: HTTP {response.status_code} {response.text}", False
        )
    confirmed = response.headers.get("Docker-Content-Digest")
    if confirmed and confirmed != digest:
        raise PackageError(f"{registry} stored the manifest as {confirmed}, not {digest}", False)
    return digest


def _upload(
    reg: Any, container: Any, path: Path, desc: Descriptor, say: Callable[[str], None] | None
) -> None:
    layer = {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}
    if reg.blob_exists(layer, container):
        if say is not None:
            say(f"layer {desc.digest[:19]} already in the registry")
        return
    if say is not None:
        say(f"uploading layer {desc.digest[:19]} ({desc.size} bytes)")
    response = reg.upload_blob(str(path), container, layer, do_chunked=desc.size > CHUNKED_ABOVE)
    if response.status_code not in (200, 201, 202):
        raise PackageError(
            f"{container.registry} refused blob {desc.digest}: HTTP {response.status_code}", False
        )

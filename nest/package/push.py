"""Pushing a built package to a registry, and finding the cluster's registry.

The push goes through oras-py's client (blob existence checks, uploads, auth from the user's
~/.docker/config.json) to the registry clients reach (`host`); the reference written into the
function names the registry as pods reach it (`hostFromClusterNetwork`), the distinction
KEP-1755's ConfigMap draws. Blobs the registry already holds are not sent again, so functions
sharing requirements upload their dependency layer once per repository. The manifest's bytes are
ours (canonical JSON), so its digest is known before the registry confirms it.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from nest.cluster.registry import (
    HOSTING_CONFIGMAP,
    HOSTING_KEY,
    HOSTING_NAMESPACE,
    RegistryHosting,
    parse_hosting,
)
from nest.package import PackageBuildError
from nest.package.build import BuiltPackage, Say
from sandbox.layers import (
    CONFIG_MEDIA_TYPE,
    LAYER_TITLES,
    MANIFEST_MEDIA_TYPE,
    TITLE_ANNOTATION,
    Descriptor,
    PackageError,
    Reference,
    client,
    manifest_json,
    sha256_digest,
)

CHUNKED_ABOVE = 32 * 1024 * 1024  # larger blobs go up in chunks, not read into memory at once
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def repository_for(namespace: str) -> str:
    """One repository per Kubernetes namespace (tenant): its functions share blobs, and a
    registry's per-repository permissions map onto tenants. Functions are its tags."""
    return f"nest/{namespace}"


def manifest_bytes(package: BuiltPackage) -> bytes:
    config = Descriptor(CONFIG_MEDIA_TYPE, sha256_digest(package.config), len(package.config))
    layers = [
        Descriptor(media, blob.digest, blob.size, {TITLE_ANNOTATION: LAYER_TITLES[media]})
        for media, blob in package.layers
    ]
    doc = manifest_json(config, layers)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def hosting_from_cluster(core: Any) -> RegistryHosting | None:
    """The registry a cluster announces (kube-public/local-registry-hosting), if any."""
    from kubernetes.client.exceptions import ApiException

    try:
        cm = core.read_namespaced_config_map(HOSTING_CONFIGMAP, HOSTING_NAMESPACE)
    except ApiException as exc:
        if exc.status in (403, 404):
            return None
        raise PackageBuildError(
            f"cannot read {HOSTING_NAMESPACE}/{HOSTING_CONFIGMAP}: {exc.reason}"
        ) from exc
    return parse_hosting(cm.data or {}) if (cm.data or {}).get(HOSTING_KEY) else None


def push(package: BuiltPackage, hosting: RegistryHosting, repository: str, tag: str, say: Say) -> (
    str
):  # fmt: skip
    """Push the package, tagged `tag`; the reference pods pull it by (registry@digest)."""
    if not _TAG.match(tag):
        raise PackageBuildError(f"{tag!r} is not a valid tag")
    try:
        reg = client(hosting.host, timeout=120.0)
    except PackageError as exc:
        raise PackageBuildError(str(exc)) from exc
    container = reg.get_container(f"{hosting.host}/{repository}:{tag}")
    try:
        for media, blob in package.layers:
            _upload(reg, container, blob.path, media, blob.digest, blob.size, say)
        with tempfile.TemporaryDirectory(prefix="nest-config-") as tmp:
            config_path = Path(tmp) / "config.json"  # oras-py uploads blobs from files
            config_path.write_bytes(package.config)
            digest, size = sha256_digest(package.config), len(package.config)
            _upload(reg, container, config_path, CONFIG_MEDIA_TYPE, digest, size, None)
        raw = manifest_bytes(package)
        url = f"{reg.prefix}://{container.manifest_url()}"
        response = reg.do_request(
            url, "PUT", data=raw, headers={"Content-Type": MANIFEST_MEDIA_TYPE}
        )
    except PackageBuildError:
        raise
    except Exception as exc:  # requests and oras errors: connection refused, HTTP errors
        raise PackageBuildError(f"cannot push to {hosting.host}: {exc}") from exc
    if response.status_code not in (200, 201):
        raise PackageBuildError(
            f"{hosting.host} refused the manifest: HTTP {response.status_code} {response.text}"
        )
    digest = sha256_digest(raw)
    confirmed = response.headers.get("Docker-Content-Digest")
    if confirmed and confirmed != digest:
        raise PackageBuildError(f"{hosting.host} stored the manifest as {confirmed}, not {digest}")
    ref = str(Reference(hosting.pull_host, repository, digest))
    say(f"pushed {hosting.host}/{repository}:{tag} ({digest[:19]})")
    return ref


def _upload(
    reg: Any, container: Any, path: Path, media: str, digest: str, size: int, say: Say | None
) -> None:
    layer = {"mediaType": media, "digest": digest, "size": size}
    if reg.blob_exists(layer, container):
        if say is not None:
            say(f"layer {digest[:19]} already in the registry")
        return
    if say is not None:
        say(f"uploading layer {digest[:19]} ({size} bytes)")
    response = reg.upload_blob(str(path), container, layer, do_chunked=size > CHUNKED_ABOVE)
    if response.status_code not in (200, 201, 202):
        raise PackageBuildError(
            f"{container.registry} refused blob {digest}: HTTP {response.status_code}"
        )

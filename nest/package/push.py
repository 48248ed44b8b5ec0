"""Pushing a built package to a registry, and finding the cluster's registry.

The push goes through oras-py's client (blob existence checks, uploads, credentials when given:
`sandbox.layers.push_artifact`, which build contexts use too) to the registry clients reach
(`host`); the reference written into the function names the registry as pods reach it
(`hostFromClusterNetwork`), the distinction KEP-1755's ConfigMap draws. Blobs the registry
already holds are not sent again, so functions sharing requirements upload their dependency
layer once per repository. The manifest's bytes are ours (canonical JSON), so its digest is
known before the registry confirms it.
"""

from __future__ import annotations

import re
from typing import Any

from nest.package import PackageBuildError
from nest.package.build import BuiltPackage, Say
from sandbox.hosting import (
    HOSTING_CONFIGMAP,
    HOSTING_KEY,
    HOSTING_NAMESPACE,
    RegistryHosting,
    parse_hosting,
)
from sandbox.hosting import repository_for as repository_for  # functions are its tags
from sandbox.layers import (
    CONFIG_MEDIA_TYPE,
    LAYER_TITLES,
    TITLE_ANNOTATION,
    Credentials,
    Descriptor,
    PackageError,
    Reference,
    push_artifact,
    sha256_digest,
)

_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def _descriptors(package: BuiltPackage) -> tuple[Descriptor, list[Descriptor]]:
    config = Descriptor(CONFIG_MEDIA_TYPE, sha256_digest(package.config), len(package.config))
    layers = [
        Descriptor(media, blob.digest, blob.size, {TITLE_ANNOTATION: LAYER_TITLES[media]})
        for media, blob in package.layers
    ]
    return config, layers


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


def push(
    package: BuiltPackage,
    hosting: RegistryHosting,
    repository: str,
    tag: str | None,
    say: Say,
    credentials: Credentials | None = None,
) -> str:
    """Push the package, tagged `tag` (None: by digest only); the reference pods pull it by
    (registry@digest)."""
    if tag is not None and not _TAG.match(tag):
        raise PackageBuildError(f"{tag!r} is not a valid tag")
    config, layers = _descriptors(package)
    blobs = [(d, blob.path) for d, (_, blob) in zip(layers, package.layers, strict=True)]
    try:
        digest = push_artifact(
            hosting.host, repository, (config, package.config), blobs, tag, credentials, say
        )
    except PackageError as exc:
        raise PackageBuildError(str(exc)) from exc
    ref = str(Reference(hosting.pull_host, repository, digest))
    say(f"pushed {hosting.host}/{repository}{':' + tag if tag else ''} ({digest[:19]})")
    return ref

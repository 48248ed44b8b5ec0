"""Build-context uploads: a platform's function directory into the registry, for in-cluster builds.

Why the gateway takes them: a downstream platform with no Python (and no registry client) of its
own sends the directory as one .tar.gz to `POST /v1/namespaces/{ns}/contexts`; the gateway
checks it (`sandbox.context`: every refusal names the entry, answered 400 before anything is
stored), pushes it to the registry by digest and answers the reference, which the platform
puts into `code.build.context`. The operator's build Job does the rest (nest.package.job).

The registry: `--registry HOST` (as the gateway reaches it) and `--registry-pull-host` (as pods
reach it, the name written into references), else what the cluster announces in
kube-public/local-registry-hosting (KEP-1755, read on every upload, so a registry published
after the gateway started is used); neither is a 503 problem naming the flag. Credentials, when
the registry wants them, are a Docker config file (`--registry-credentials`), read per upload so
a rotated Secret is picked up. Uploads read up to 64 MiB (not the 6 MiB JSON limit of the rest of
the API) and at most UPLOAD_CONCURRENCY are held in memory at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.errors import (
    BadRequest,
    FieldError,
    NotConfigured,
    PayloadTooLarge,
    UnsupportedMediaType,
    Upstream,
)
from gateway.kube import Kube
from gateway.routes import UPLOAD_MEDIA_TYPES
from nest_api import models as m
from sandbox.context import MAX_CONTEXT_BYTES, ContextError, check_context, push_context
from sandbox.hosting import (
    HOSTING_CONFIGMAP,
    HOSTING_NAMESPACE,
    RegistryHosting,
    docker_config_credentials,
    parse_hosting,
    repository_for,
)
from sandbox.layers import Credentials, PackageError, credentials_for

UPLOAD_CONCURRENCY = 2  # uploads held in memory at once (64 MiB each, at most)
_CHUNK = 1024 * 1024
NO_REGISTRY = (
    "this gateway has no registry to store build contexts in: start it with --registry HOST "
    "(env NEST_GATEWAY_REGISTRY; --registry-pull-host if pods reach it by another name), or "
    f"publish ConfigMap {HOSTING_NAMESPACE}/{HOSTING_CONFIGMAP} (KEP-1755) for the cluster's "
    "registry"
)


@dataclass(frozen=True)
class RegistrySettings:
    """The gateway's registry flags; all None: the cluster's announced registry."""

    host: str | None = None
    pull_host: str | None = None
    credentials_file: str | None = None


def chosen_hosting(
    settings: RegistrySettings, announced: RegistryHosting | None
) -> RegistryHosting | None:
    """The flags win over the announcement; --registry-pull-host renames either's pull side."""
    found = RegistryHosting(settings.host, settings.host) if settings.host else announced
    if found is not None and settings.pull_host:
        return RegistryHosting(found.host, settings.pull_host)
    return found


def read_credentials(settings: RegistrySettings, registry: str) -> Credentials | None:
    """The credentials for `registry` in the --registry-credentials file (a Docker config.json
    or a dockerconfigjson Secret's file) or directory; None without one."""
    if not settings.credentials_file:
        return None
    path = Path(settings.credentials_file)
    if path.is_dir():
        return docker_config_credentials(registry, path)
    try:
        return credentials_for(path.read_bytes(), registry)
    except OSError as exc:
        raise PackageError(f"cannot read {path}: {exc.strerror}", permanent=True) from exc


def refused(exc: ContextError) -> BadRequest:
    """The 400 for a context that may not be built: the detail says why, the field names the
    entry (the archive as a whole when no entry is to blame)."""
    entry = f"body:{exc.entry}" if exc.entry else "body"
    return BadRequest(f"the build context is refused: {exc}", [FieldError(entry, str(exc))])


async def read_upload(request: web.BaseRequest, limit: int) -> bytes:
    """The raw body, at most `limit` bytes (more: 413, said from Content-Length when it is
    declared, before anything is read)."""
    too_large = PayloadTooLarge(
        f"the build context is larger than the limit of {limit} bytes ({limit // _CHUNK} MiB)"
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class Uploader:
    """Checks and stores uploaded build contexts."""

    def __init__(
        self, kube: Kube, settings: RegistrySettings, max_bytes: int = MAX_CONTEXT_BYTES
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.max_bytes = max_bytes
        self.slots = asyncio.Semaphore(UPLOAD_CONCURRENCY)

    async def hosting(self) -> RegistryHosting:
        announced = None
        if not self.settings.host:
            cm = await self.kube.find_configmap(HOSTING_NAMESPACE, HOSTING_CONFIGMAP)
            announced = parse_hosting((cm or {}).get("data"))
        found = chosen_hosting(self.settings, announced)
        if found is None:
            raise NotConfigured(NO_REGISTRY)
        return found

    async def upload(self, request: web.BaseRequest, namespace: str) -> m.ContextUpload:
        if request.content_type not in UPLOAD_MEDIA_TYPES:
            raise UnsupportedMediaType(
                f"send the build context as {UPLOAD_MEDIA_TYPES[0]} (a .tar.gz of the function "
                f"directory), not {request.content_type}"
            )
        hosting = await self.hosting()  # before reading 64 MiB: no registry, no upload
        async with self.slots:
            data = await read_upload(request, self.max_bytes)
            try:
                files = await asyncio.to_thread(check_context, data, self.max_bytes)
                credentials = read_credentials(self.settings, hosting.host)
                ref = await asyncio.to_thread(
                    push_context, data, hosting.host, hosting.pull_host,
                    repository_for(namespace), credentials, files,
                )  # fmt: skip
            except ContextError as exc:
                raise refused(exc) from exc
            except PackageError as exc:
                raise Upstream(f"storing the build context in {hosting.host}: {exc}") from exc
        return m.ContextUpload(context=ref, files=files, bytes=len(data))

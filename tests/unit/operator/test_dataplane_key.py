"""The data-plane key Secret: created once (AlreadyExists is success), read again for signing."""

from __future__ import annotations

import base64
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from nest_operator import dataplane_key
from sandbox import dataplane_auth as auth


class FakeCore:
    """The two CoreV1Api calls the module makes, backed by one stored Secret (the API server's
    create semantics: the first create wins, later ones get 409)."""

    def __init__(self, fail: int | None = None) -> None:
        self.stored: Any = None  # the V1Secret created
        self.fail = fail
        self.reads = 0

    def create_namespaced_secret(self, namespace: str, body: Any) -> None:
        if self.fail is not None:
            raise ApiException(status=self.fail, reason="Forbidden")
        if self.stored is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        assert body.metadata.namespace == namespace
        self.stored = body

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        self.reads += 1
        if self.stored is None or name != self.stored.metadata.name:
            raise ApiException(status=404, reason="NotFound")
        return self.stored


def api(core: FakeCore) -> client.CoreV1Api:
    return cast(client.CoreV1Api, core)


def test_the_manifest_holds_one_random_current_key() -> None:
    key = auth.new_key()
    secret = dataplane_key.secret_manifest("nest-system", key)
    assert (secret.metadata.name, secret.metadata.namespace) == (auth.SECRET_NAME, "nest-system")
    assert secret.type == "Opaque"
    assert secret.data == {auth.SIGNING_NAME: base64.b64encode(key).decode()}
    assert len(key) == 32


def test_ensure_creates_once_and_never_replaces_the_key() -> None:
    core = FakeCore()
    assert dataplane_key.ensure(api(core), "nest-system") is True
    first = core.stored
    assert dataplane_key.ensure(api(core), "nest-system") is False
    assert core.stored is first  # a second operator (or restart) keeps the existing key


def test_ensure_reports_other_failures() -> None:
    with pytest.raises(ApiException):
        dataplane_key.ensure(api(FakeCore(fail=403)), "nest-system")


async def test_secret_keys_sign_what_a_runtime_with_the_mounted_secret_accepts() -> None:
    core = FakeCore()
    keys = dataplane_key.SecretKeys(api(core), "nest-system", retry_seconds=0)
    assert await keys.ring() is None  # no Secret yet: scrapes go unsigned, nothing crashes
    dataplane_key.ensure(api(core), "nest-system")
    ring = await keys.ring()
    assert ring is not None
    mounted = auth.KeyRing(
        {name: base64.b64decode(value) for name, value in core.stored.data.items()}
    )
    header = ring.sign("GET", "/metrics")
    assert mounted.verify(header, "GET", "/metrics", "", b"") is None


async def test_secret_keys_are_cached_between_refreshes() -> None:
    core = FakeCore()
    dataplane_key.ensure(api(core), "nest-system")
    keys = dataplane_key.SecretKeys(api(core), "nest-system")
    first = await keys.ring()
    assert await keys.ring() is first
    assert core.reads == 1
    keys.stale()  # a refusal asks for a re-read, after the retry delay, not at once
    assert await keys.ring() is first and core.reads == 1

"""The data-plane key Secret: the operator creates it once, and signs its own scrapes with it.

Why the operator: the key must exist before the gateway and the pool pods can start (they mount
it), no human should have to generate it, and the operator is the one component that is always
there first. At start-up it creates `nest-system/nest-dataplane-key` (32 random bytes under
`current`) when absent: a plain create whose AlreadyExists is success, so two operators starting
at once (an upgrade's surge, a standby) cannot race into two different keys — the API server
keeps exactly one, and the loser simply reads it. An existing Secret is never overwritten:
rotating is an edit of the Secret by its owner (see `sandbox.dataplane_auth`).

The autoscaler signs its /metrics scrapes of the runtimes with the same key; it reads the Secret
through the API (RBAC: `get` on that one name) rather than a volume, since the operator's own pod
would otherwise wait for a Secret that only it creates. The keys are re-read every minute, and
sooner after a runtime refused a signature, so a rotation reaches the scrapes without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from nest_operator.kube import load_api
from sandbox import dataplane_auth as auth

log = logging.getLogger(__name__)
REFRESH_SECONDS = 60.0
RETRY_SECONDS = 5.0  # after a refusal or a failed read: soon, but not per scrape


def namespace() -> str:
    return os.environ.get("POD_NAMESPACE", "nest-system")


def secret_manifest(ns: str, key: bytes) -> client.V1Secret:
    """The Secret as created: one key, `current`; labelled so that `kubectl get -l` finds it."""
    return client.V1Secret(
        api_version="v1",
        kind="Secret",
        type="Opaque",
        metadata=client.V1ObjectMeta(
            name=auth.SECRET_NAME,
            namespace=ns,
            labels={"app.kubernetes.io/name": "nest", "app.kubernetes.io/component": "dataplane"},
            annotations={
                "nest.sandbox.dev/description": "HMAC key of the runtimes' data plane: the gateway "
                "and the operator sign with 'current'; every key in it verifies",
            },
        ),
        data={auth.SIGNING_NAME: base64.b64encode(key).decode()},
    )


def ensure(core: client.CoreV1Api, ns: str | None = None) -> bool:
    """Create the Secret unless it exists; True when this call created it. Idempotent."""
    ns = ns or namespace()
    try:
        core.create_namespaced_secret(ns, secret_manifest(ns, auth.new_key()))
    except ApiException as exc:
        if exc.status == 409:  # AlreadyExists: another start (or replica) got there first
            return False
        raise
    log.info("created the data-plane key Secret %s/%s", ns, auth.SECRET_NAME)
    return True


async def ensure_at_startup() -> None:
    """`ensure` for the operator's start-up: failing to create is loud but not fatal, because
    scheduling for pools that are already running must not stop over it."""
    api = load_api()
    try:
        await asyncio.to_thread(ensure, client.CoreV1Api(api))
    except ApiException as exc:
        log.error(
            "cannot create the data-plane key Secret %s/%s (%s %s): the gateway and pool pods "
            "wait for it; check the operator's RBAC (deploy/dataplane-key-rbac.yaml)",
            namespace(), auth.SECRET_NAME, exc.status, exc.reason,
        )  # fmt: skip
    finally:
        api.close()


class SecretKeys:
    """The key ring from the Secret, cached; None while the Secret cannot be read."""

    def __init__(
        self, core: client.CoreV1Api, ns: str | None = None,
        refresh_seconds: float = REFRESH_SECONDS, retry_seconds: float = RETRY_SECONDS,
    ) -> None:  # fmt: skip
        self.core = core
        self.namespace = ns or namespace()
        self.refresh_seconds = refresh_seconds
        self.retry_seconds = retry_seconds
        self._ring: auth.KeyRing | None = None
        self._due = 0.0

    def stale(self) -> None:
        """A runtime refused our signature: re-read soon (the Secret may have been rotated)."""
        self._due = min(self._due, time.monotonic() + self.retry_seconds)

    async def ring(self) -> auth.KeyRing | None:
        now = time.monotonic()
        if now < self._due:
            return self._ring
        try:
            secret = await asyncio.to_thread(
                self.core.read_namespaced_secret, auth.SECRET_NAME, self.namespace
            )
            ring = auth.from_secret_data(secret.data)
        except (ApiException, auth.DataplaneKeyError, ValueError) as exc:
            log.warning("cannot read the data-plane key %s/%s: %s; scrapes are unsigned",
                        self.namespace, auth.SECRET_NAME, getattr(exc, "reason", exc))  # fmt: skip
            self._due = now + self.retry_seconds
            return self._ring
        self._ring, self._due = ring, now + self.refresh_seconds
        return ring

"""The gateway's authorizer against the real API server (Kubernetes 1.20), then without it.

What only a real cluster shows: that the API server publishes its service-account issuer's keys
where `gateway.jwks` looks (`/.well-known/openid-configuration`, `/openid/v1/jwks`, readable by
any ServiceAccount through the default `system:service-account-issuer-discovery` binding), that
its tokens verify against them, and that the user the gateway makes of a verified token is the
very user a TokenReview reports, so decisions remembered for one token apply to the next token
of the same identity (the kubelet rotates them).

The shared API server cannot be stopped (others use it), so the outage is the gateway's view of
it: the authorizer's reviews go through a switch that, once cut, answers as an unreachable API
server does (`Unreachable`), while the keys were fetched from the real one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from gateway.auth import ApiReviewer, Authorizer, User, identity_key, user_from_claims
from gateway.auth_policy import Answer, AuthUnavailable, Local, Windows
from gateway.errors import Forbidden
from gateway.jwks import HttpFetch, IssuerKeys
from gateway.routes import INVOKE_SUBRESOURCE, Access
from nest_kube import Api, HttpApi, Unreachable, connect
from nest_kube.resources import Resource

pytestmark = pytest.mark.cluster
INVOKE = Access("create", subresource=INVOKE_SUBRESOURCE)


class Switch:
    """The API server as the gateway sees it: the real one until `cut`."""

    def __init__(self, api: HttpApi) -> None:
        self.api, self.cut = api, False

    async def create(
        self, resource: Resource, namespace: str | None, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        if self.cut:
            raise Unreachable("connection refused (cut by the test)")
        return await self.api.create(resource, namespace, body)


def account_with_invoke(api: client.ApiClient, namespace: str, name: str, grant: bool) -> None:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    account: Any = {"metadata": {"name": name}}  # the client takes plain JSON too
    core.create_namespaced_service_account(namespace, account)
    if not grant:
        return
    rule = {"apiGroups": ["nest.sandbox.dev"], "resources": ["sandboxdeployments/invoke"],
            "verbs": ["create"]}  # fmt: skip
    role: Any = {"metadata": {"name": name}, "rules": [rule]}
    binding: Any = {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }
    rbac.create_namespaced_role(namespace, role)
    rbac.create_namespaced_role_binding(namespace, binding)


def token_of(api: client.ApiClient, namespace: str, name: str, seconds: int = 600) -> str:
    """A token as the kubelet requests one (default audiences); tokens made within the same
    second for the same account and lifetime are the same bytes, hence `seconds`."""
    spec = client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
    request = client.AuthenticationV1TokenRequest(spec=spec)
    made = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, request)
    assert made.status is not None
    return str(made.status.token)


async def authorized(authorizer: Authorizer, token: str, ns: str, timeout: float = 30) -> User:
    """Authorise, waiting (with a deadline) for a RoleBinding just made to reach RBAC's cache."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await authorizer.authorize(f"Bearer {token}", INVOKE, ns, "fn")
        except Forbidden:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.2)  # polling the condition; refusals are never remembered


async def test_known_callers_survive_the_api_server_going_away_and_strangers_get_503(
    kubeconfig: Path, api: client.ApiClient, namespace: str
) -> None:
    account_with_invoke(api, namespace, "app", grant=True)
    account_with_invoke(api, namespace, "idle", grant=True)  # allowed, but never seen
    account_with_invoke(api, namespace, "stranger", grant=False)
    first, rotated = token_of(api, namespace, "app"), token_of(api, namespace, "app", 700)
    assert first != rotated  # the kubelet's renewal of the pod's token
    idle, stranger = token_of(api, namespace, "idle"), token_of(api, namespace, "stranger")
    connection = connect(kubeconfig)
    http, fetch = HttpApi(connection), HttpFetch(connection)
    switch = Switch(http)
    keys = IssuerKeys(fetch)
    try:
        keyset = await keys.refresh()  # what the gateway does at start
        assert keyset.issuer.startswith("https://") and keyset.keys
        # Freshness 0: every request asks, so every request after the cut meets the outage.
        authorizer = Authorizer(ApiReviewer(cast(Api, switch)), Windows(0, 300), keys)
        user = await authorized(authorizer, first, namespace)
        assert user.name == f"system:serviceaccount:{namespace}:app"
        verified = keys.verify(rotated)
        assert verified.local is Local.VERIFIED, verified.reason
        assert identity_key(user_from_claims(verified.claims)) == identity_key(user)

        switch.cut = True
        assert (await authorizer.authorize(f"Bearer {first}", INVOKE, namespace, "fn")) == user
        assert authorizer.answers["identity", Answer.STALE] == 1
        again = await authorizer.authorize(f"Bearer {rotated}", INVOKE, namespace, "fn")
        assert identity_key(again) == identity_key(user)
        assert authorizer.answers["identity", Answer.LOCAL] == 1
        for unknown in (idle, stranger):  # proven identities, no remembered decision: 503
            with pytest.raises(AuthUnavailable) as caught:
                await authorizer.authorize(f"Bearer {unknown}", INVOKE, namespace, "fn")
            assert int(caught.value.headers["Retry-After"]) >= 1
        with pytest.raises(AuthUnavailable):
            await authorizer.authorize("Bearer not-a-token", INVOKE, namespace, "fn")
    finally:
        await fetch.close()
        await http.close()

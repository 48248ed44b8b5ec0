"""Local verification of ServiceAccount JWTs, with issuer keys made here (RSA and ECDSA).

The tokens are shaped as Kubernetes issues them (iss, sub, aud, exp, the `kubernetes.io` claim
naming namespace, ServiceAccount and pod), signed with PyJWT; the verifier must accept exactly
those, say INVALID only for a provable no, and have no opinion on everything else.
"""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth import user_from_claims
from gateway.auth_policy import Local
from gateway.jwks import (
    DISCOVERY_PATH,
    JWKS_PATH,
    HttpFetch,
    IssuerKeys,
    KeysError,
    KeySet,
    parse_keyset,
    verify_token,
)
from nest_kube import ApiError, Unreachable, connect
from tests.unit.kube.support import eventually

ISSUER = "https://kubernetes.default.svc"
NOW = 1_800_000_000.0
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(alg)
    found: dict[str, Any] = algorithm.to_jwk(key.public_key(), as_dict=True)
    return {**found, "kid": kid, "alg": alg, "use": "sig"}


JWKS = {"keys": [jwk(RSA_KEY, "rsa-1", "RS256"), jwk(EC_KEY, "ec-1", "ES256")]}
DISCOVERY = {"issuer": ISSUER, "jwks_uri": "https://127.0.0.1/openid/v1/jwks"}
KEYS = parse_keyset(DISCOVERY, JWKS, NOW)


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "system:serviceaccount:team-a:app",
        "aud": [ISSUER],
        "iat": int(NOW) - 60,
        "nbf": int(NOW) - 60,
        "exp": int(NOW) + 3600,
        "kubernetes.io": {
            "namespace": "team-a",
            "serviceaccount": {"name": "app", "uid": "sa-uid"},
            "pod": {"name": "app-1", "uid": "pod-uid"},
        },
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def token(
    key: Any = RSA_KEY,
    kid: str = "rsa-1",
    alg: str = "RS256",
    k8s: dict[str, Any] | None = None,
    **changes: Any,
) -> str:
    """A token as the issuer makes it; `k8s` replaces the `kubernetes.io` claim ({}: none)."""
    made = claims(**changes)
    if k8s is not None:
        made = {k: v for k, v in made.items() if k != "kubernetes.io"} | (
            {"kubernetes.io": k8s} if k8s else {}
        )
    return jwt.encode(made, key, algorithm=alg, headers={"kid": kid})


@pytest.mark.parametrize(
    ("made", "local", "reason"),
    [
        (token(), Local.VERIFIED, "signed"),
        (token(EC_KEY, "ec-1", "ES256"), Local.VERIFIED, "signed"),
        (token(exp=int(NOW) - 30), Local.VERIFIED, "signed"),  # within the clock-skew leeway
        (token(exp=int(NOW) - 61), Local.INVALID, "expired"),
        (token(OTHER_KEY), Local.INVALID, "signature"),  # a known key id, another key: forged
        (token(kid="rsa-2"), Local.UNVERIFIABLE, "unknown key id"),  # maybe a rotated key
        (token(iss="https://elsewhere"), Local.UNVERIFIABLE, "issuer"),
        (token(iss="kubernetes/serviceaccount"), Local.UNVERIFIABLE, "issuer"),  # legacy
        (token(aud=["vault"]), Local.UNVERIFIABLE, "audience"),
        (token(nbf=int(NOW) + 600), Local.UNVERIFIABLE, "not valid yet"),
        (token(k8s={}), Local.UNVERIFIABLE, "not a ServiceAccount"),
        (token(sub="system:serviceaccount:team-a:admin"), Local.UNVERIFIABLE, "subject"),
        (token(exp=None), Local.UNVERIFIABLE, "not verifiable"),
        ("static-token-from-a-csv", Local.UNVERIFIABLE, "not a JWT"),
        (
            jwt.encode(claims(), "s" * 32, algorithm="HS256", headers={"kid": "rsa-1"}),
            Local.INVALID,
            "algorithm",
        ),
        (
            jwt.encode(claims(), "", algorithm="none", headers={"kid": "rsa-1"}),
            Local.INVALID,
            "algorithm",
        ),
    ],
)
def test_verification(made: str, local: Local, reason: str) -> None:
    found = verify_token(made, KEYS, (), NOW)
    assert found.local is local, found.reason
    assert reason in found.reason
    assert bool(found.claims) is (local is Local.VERIFIED)


def test_audiences_can_be_configured_and_no_keys_means_no_opinion() -> None:
    assert verify_token(token(aud=["vault"]), KEYS, ("vault",), NOW).local is Local.VERIFIED
    assert verify_token(token(), KEYS, ("vault",), NOW).local is Local.UNVERIFIABLE
    assert verify_token(token(), None, (), NOW).local is Local.UNVERIFIABLE


def test_the_key_set_keeps_usable_signing_keys_only() -> None:
    secret = {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"}
    no_kid = {k: v for k, v in jwk(RSA_KEY, "x", "RS256").items() if k != "kid"}
    encryption = {**jwk(RSA_KEY, "enc", "RS256"), "use": "enc"}
    keys = {"keys": [*JWKS["keys"], secret, no_kid, encryption, "junk"]}
    found = parse_keyset(DISCOVERY, keys, NOW)
    assert sorted(found.keys) == ["ec-1", "rsa-1"] and found.issuer == ISSUER
    with pytest.raises(KeysError, match="no issuer"):
        parse_keyset({}, JWKS, NOW)
    with pytest.raises(KeysError, match="no usable"):
        parse_keyset(DISCOVERY, {"keys": [secret]}, NOW)


def test_the_user_is_the_one_the_api_server_makes_of_the_token() -> None:
    verified = verify_token(token(), KEYS, (), NOW)
    user = user_from_claims(verified.claims)
    assert user.name == "system:serviceaccount:team-a:app" and user.uid == "sa-uid"
    assert set(user.groups) == {
        "system:serviceaccounts",
        "system:serviceaccounts:team-a",
        "system:authenticated",
    }
    assert dict(user.extra) == {
        "authentication.kubernetes.io/pod-name": ("app-1",),
        "authentication.kubernetes.io/pod-uid": ("pod-uid",),
    }


class Documents:
    """The two documents as the API server serves them, failing on demand."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = JWKS
        self.failures = 0
        self.calls: list[str] = []

    async def __call__(self, path: str) -> dict[str, Any]:
        self.calls.append(path)
        if self.failures:
            self.failures -= 1
            raise Unreachable("connection refused")
        return DISCOVERY if path == DISCOVERY_PATH else self.jwks


async def test_keys_fetched_while_up_are_kept_through_an_outage() -> None:
    documents = Documents()
    keys = IssuerKeys(documents, clock=lambda: NOW)
    assert keys.verify(token()).local is Local.UNVERIFIABLE  # nothing fetched yet
    found = await keys.refresh()
    assert isinstance(found, KeySet) and documents.calls == [DISCOVERY_PATH, JWKS_PATH]
    documents.failures = 5
    with pytest.raises(Unreachable):
        await keys.refresh()
    assert keys.verify(token()).local is Local.VERIFIED  # the last keys published still count


async def test_the_refresher_retries_and_fetches_again_for_an_unknown_key() -> None:
    documents = Documents()
    documents.failures = 2  # the API server is away when the gateway starts
    keys = IssuerKeys(documents, refresh_seconds=3600, clock=lambda: NOW)
    task = asyncio.create_task(keys.run(min_delay=0.001, max_delay=0.002))
    try:
        await eventually(lambda: keys.keyset, what="keys after two failed fetches")
        documents.jwks = {"keys": [*JWKS["keys"], jwk(OTHER_KEY, "rsa-2", "RS256")]}
        rotated = token(OTHER_KEY, "rsa-2")
        assert keys.verify(rotated).local is Local.UNVERIFIABLE  # asks for a refresh
        await eventually(
            lambda: keys.verify(rotated).local is Local.VERIFIED, what="the rotated key"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_documents_are_fetched_over_http_with_the_gateways_credentials() -> None:
    seen: list[str | None] = []

    async def serve(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer gateway-token":
            return web.json_response({"kind": "Status", "message": "forbidden"}, status=403)
        # As kube-apiserver 1.20 does: each document only in its own media type (else 406).
        media = "application/json" if request.path == DISCOVERY_PATH else "application/jwk-set+json"
        if media not in request.headers.get("Accept", media):
            return web.json_response({"kind": "Status", "message": "406"}, status=406)
        document = DISCOVERY if request.path == DISCOVERY_PATH else JWKS
        return web.json_response(document, content_type=media)

    app = web.Application()
    app.router.add_get(DISCOVERY_PATH, serve)
    app.router.add_get(JWKS_PATH, serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    host = f"http://127.0.0.1:{server.port}"
    fetch = HttpFetch(connect(token="gateway-token", host=host))
    try:
        keys = IssuerKeys(fetch, clock=lambda: NOW)
        assert sorted((await keys.refresh()).keys) == ["ec-1", "rsa-1"]
        assert seen == ["Bearer gateway-token"] * 2
        refused = HttpFetch(connect(token="someone-else", host=host))
        with pytest.raises(ApiError) as caught:
            await refused(JWKS_PATH)
        assert caught.value.status == 403
        await refused.close()
        await server.close()
        with pytest.raises(Unreachable):
            await fetch(JWKS_PATH)
    finally:
        await fetch.close()
        await server.close()

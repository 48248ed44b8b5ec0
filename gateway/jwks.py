"""ServiceAccount tokens verified locally, against the issuer keys the API server publishes.

Why: while the API server is down nobody can run a TokenReview, yet a ServiceAccount token is a
JWT signed by the cluster's service-account issuer, and since Kubernetes 1.20 (feature
ServiceAccountIssuerDiscovery, beta and on by default) the API server publishes that issuer's
public keys: `/.well-known/openid-configuration` (the issuer) and `/openid/v1/jwks` (the keys).
The gateway fetches both while the API server is up, keeps them through an outage, and then
verifies the signature, issuer, audience and validity period of a caller's token itself. The
keys are always read from the API server's own `/openid/v1/jwks`, not from the document's
`jwks_uri`: that URI is for relying parties outside the cluster (and on a cluster whose
external address has no port, such as the local one, it names no server at all).

What a local verification proves, and what it does not (docs/security.md "When the API server
is down"): that the issuer signed this token for this audience and that it has not expired;
not that the ServiceAccount, Secret or Pod it is bound to still exists (the API server checks
that, so a token revoked by deleting them stays good here until it expires), and never what the
caller may do: authorisation always comes from a SubjectAccessReview answer. Legacy Secret-based
tokens (issuer `kubernetes/serviceaccount`, no expiry) are therefore never accepted locally:
their only revocation is deleting the Secret, which only the API server can see.

The verification itself is PyJWT's (with `cryptography`); only asymmetric algorithms of the
published keys are accepted, never `none` or a shared-secret HMAC. The decision is a pure
function of (token, keys, audiences, now); `IssuerKeys` is the shell that fetches and refreshes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt

from gateway.auth_policy import Local
from nest_kube import ApiError, Connection, Unreachable

log = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"
# What the API server signs with (RS256 for RSA keys, ES* for ECDSA keys); never "none" or HS*.
ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")
LEEWAY_SECONDS = 60.0  # clock skew between the issuer and the gateway (the API server's own)
Fetch = Callable[[str], Awaitable[dict[str, Any]]]
# The API server serves the key set only as application/jwk-set+json (406 to a client accepting
# just application/json) and the discovery document only as application/json: accept both.
ACCEPT = "application/jwk-set+json, application/json"


class KeysError(Exception):
    """The published documents give no usable issuer or key (the message says which)."""


@dataclass(frozen=True)
class KeySet:
    """The issuer and its public keys by key id, as fetched at `fetched_at` (wall clock)."""

    issuer: str
    keys: Mapping[str, jwt.PyJWK]
    fetched_at: float = 0.0


@dataclass(frozen=True)
class Verification:
    """What verifying one token found; `claims` only when it is VERIFIED."""

    local: Local
    reason: str
    claims: dict[str, Any] = field(default_factory=dict)


def parse_keyset(discovery: Mapping[str, Any], jwks: Mapping[str, Any], now: float) -> KeySet:
    """The key set from the discovery document and the JWKS; keys PyJWT cannot use (another key
    type, a symmetric key) are left out. Raises KeysError when no issuer or no key is left."""
    issuer = discovery.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise KeysError(f"{DISCOVERY_PATH} names no issuer")
    keys: dict[str, jwt.PyJWK] = {}
    for data in jwks.get("keys") or []:
        if not isinstance(data, dict) or not data.get("kid") or data.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(data)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            log.debug("skipping published key %s: %s", data.get("kid"), exc)
            continue
        if key.algorithm_name in ALGORITHMS:
            keys[str(data["kid"])] = key
    if not keys:
        raise KeysError(f"{JWKS_PATH} has no usable signing key")
    return KeySet(issuer, keys, now)


def verify_token(
    token: str, keyset: KeySet | None, audiences: tuple[str, ...], now: float
) -> Verification:
    """Whether `token` is a ServiceAccount token of `keyset`'s issuer for one of `audiences`
    (empty: the issuer itself, the API server's default audience), valid at `now`.

    INVALID only when the token is provably bad: a known key whose signature does not match, or
    an expiry past. Anything the keys cannot judge (not a JWT, another issuer, an unknown key id,
    another audience, not a ServiceAccount) is UNVERIFIABLE: no opinion, so a remembered answer
    of the API server still counts and otherwise the caller gets a 503, not a 401."""
    if keyset is None:
        return Verification(Local.UNVERIFIABLE, "no issuer keys fetched yet")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return Verification(Local.UNVERIFIABLE, "not a JWT")
    if unverified.get("iss") != keyset.issuer:
        return Verification(Local.UNVERIFIABLE, f"issuer {unverified.get('iss')!r} is not ours")
    key = keyset.keys.get(str(header.get("kid") or ""))
    if key is None:
        return Verification(Local.UNVERIFIABLE, f"unknown key id {header.get('kid')!r}")
    if header.get("alg") != key.algorithm_name:
        return Verification(Local.INVALID, f"algorithm {header.get('alg')!r} is not the key's")
    wanted = list(audiences or (keyset.issuer,))
    try:
        claims = jwt.decode(
            token, key=key, algorithms=[key.algorithm_name], audience=wanted,
            issuer=keyset.issuer,
            # The validity period is checked below against the caller's clock (testable).
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                     "require": ["iss", "sub", "aud", "exp"]},
        )  # fmt: skip
    except jwt.InvalidSignatureError:
        return Verification(Local.INVALID, "signature does not match the issuer's key")
    except jwt.InvalidAudienceError:
        return Verification(Local.UNVERIFIABLE, f"audience is not one of {wanted}")
    except jwt.PyJWTError as exc:
        return Verification(Local.UNVERIFIABLE, f"not verifiable: {exc}")
    return _check_claims(claims, now)


def _check_claims(claims: dict[str, Any], now: float) -> Verification:
    """The validity period and the ServiceAccount shape of signature-checked claims."""
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if not isinstance(exp, int | float):
        return Verification(Local.UNVERIFIABLE, "no numeric expiry")
    if now >= exp + LEEWAY_SECONDS:
        return Verification(Local.INVALID, "token expired")
    if isinstance(nbf, int | float) and now < nbf - LEEWAY_SECONDS:
        return Verification(Local.UNVERIFIABLE, "token not valid yet")
    k8s = claims.get("kubernetes.io")
    account = k8s.get("serviceaccount") if isinstance(k8s, dict) else None
    if not isinstance(account, dict) or not isinstance(k8s, dict):
        return Verification(Local.UNVERIFIABLE, "not a ServiceAccount token")
    namespace, name = k8s.get("namespace"), account.get("name")
    if claims.get("sub") != f"system:serviceaccount:{namespace}:{name}":
        return Verification(Local.UNVERIFIABLE, "subject does not name the ServiceAccount")
    return Verification(Local.VERIFIED, "signed by the issuer", claims)


class IssuerKeys:
    """The issuer's keys, fetched from the API server at start and every `refresh_seconds`,
    kept when a refresh fails (so an outage keeps the last keys the API server published)."""

    def __init__(
        self,
        fetch: Fetch,
        audiences: tuple[str, ...] = (),
        refresh_seconds: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fetch, self.audiences, self.refresh_seconds = fetch, audiences, refresh_seconds
        self.clock = clock
        self.keyset: KeySet | None = None
        self._wanted = asyncio.Event()  # a token named a key id we do not have

    async def refresh(self) -> KeySet:
        """Fetch both documents now; raises ApiError or KeysError (the old keys stay)."""
        discovery = await self.fetch(DISCOVERY_PATH)
        keys = await self.fetch(JWKS_PATH)
        keyset = parse_keyset(discovery, keys, self.clock())
        if self.keyset is None or set(keyset.keys) != set(self.keyset.keys):
            log.info("service-account issuer %s: %d key(s)", keyset.issuer, len(keyset.keys))
        self.keyset = keyset
        return keyset

    def verify(self, token: str) -> Verification:
        found = verify_token(token, self.keyset, self.audiences, self.clock())
        if found.reason.startswith("unknown key id"):
            self._wanted.set()  # the issuer may have a new key: fetch again when possible
        return found

    async def run(self, min_delay: float = 2.0, max_delay: float = 60.0) -> None:
        """Refresh until cancelled: every `refresh_seconds`, sooner when a token named an
        unknown key (at most every `min_delay`), with back-off while the API server is away."""
        delay, failures = min_delay, 0
        while True:
            self._wanted.clear()
            try:
                await self.refresh()
            except (ApiError, KeysError, ValueError) as exc:
                # Said once per failure streak: a cluster without issuer discovery (or a gateway
                # without the RBAC to read it) would otherwise log every minute forever.
                level = logging.WARNING if failures == 0 else logging.DEBUG
                log.log(level, "service-account issuer keys not fetched (%s): tokens cannot be "
                        "verified locally during an API-server outage; retrying", exc)  # fmt: skip
                failures += 1
                await asyncio.sleep(delay)
                delay = min(max_delay, delay * 2)
                continue
            delay, failures = min_delay, 0
            try:
                await asyncio.wait_for(self._wanted.wait(), self.refresh_seconds)
                await asyncio.sleep(min_delay)  # at most one refresh per min_delay
            except TimeoutError:
                pass


class HttpFetch:
    """GET a JSON document from the API server with the gateway's credentials (the discovery
    paths are not resources, so `nest_kube.Api` has no verb for them)."""

    def __init__(self, connection: Connection, timeout: float = 10.0) -> None:
        self.connection, self.timeout = connection, timeout
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, path: str) -> dict[str, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        headers = {"Accept": ACCEPT}
        authorization = self.connection.authorization()
        if authorization:
            headers["Authorization"] = authorization
        host = self.connection.host
        ssl = self.connection.ssl_context() if host.startswith("https") else False
        try:
            async with self._session.get(
                host + path, headers=headers, ssl=ssl,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                server_hostname=self.connection.server_hostname,
            ) as response:  # fmt: skip
                raw = await response.read()
                if response.status >= 300:
                    message = raw[:300].decode(errors="replace").strip()
                    raise ApiError(response.status, response.reason or "", {"message": message})
                found = json.loads(raw)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise Unreachable(f"GET {path}: {exc or type(exc).__name__}") from exc
        if not isinstance(found, dict):
            raise KeysError(f"{path} is not a JSON object")
        return found

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

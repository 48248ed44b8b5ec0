"""Authentication and authorisation decided by Kubernetes, not by the gateway, and remembered.

A caller presents a bearer token. A TokenReview tells who it is (user, groups, extra); a
SubjectAccessReview for that user and the operation's verb/resource/subresource in the
function's namespace tells whether cluster RBAC allows it. The gateway keeps no user database
and no policy of its own, so `kubectl create rolebinding` is all it takes to grant a platform
access. "Yes" answers are remembered (identities keyed by a hash of the token, never the token;
decisions by identity and attributes) so a stream of invocations does not cost two API calls
each; "no" answers are never remembered, so a newly granted right works at once.

What to answer when the API server cannot answer is decided in `gateway.auth_policy` (pure):
a "yes" stays good for a bounded stale window, ServiceAccount JWTs may be verified against the
issuer's published keys (`gateway.jwks`) to prove who the caller is, and everything else is a
503 with Retry-After. This module is the shell around those decisions: it asks (with a timeout,
and not at all while `ApiHealth` says the API server is down), remembers, and raises.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from crds.constants import GROUP
from gateway.auth_policy import (
    Answer,
    ApiHealth,
    AuthUnavailable,
    OutagePolicy,
    Review,
    Windows,
    access_answer,
    identity_answer,
    is_outage,
    must_ask,
)
from gateway.errors import Forbidden, GatewayError, Unauthenticated
from gateway.jwks import HttpFetch, IssuerKeys, Verification
from gateway.kube import api_error
from gateway.routes import Access
from nest_kube import Api, ApiError, HttpApi
from nest_kube.resources import SUBJECT_ACCESS_REVIEWS, TOKEN_REVIEWS, Resource

log = logging.getLogger(__name__)
REVIEW_TIMEOUT_SECONDS = 5.0  # a review slower than this counts as no answer (then: memory)
SERVICEACCOUNT_EXTRA = "authentication.kubernetes.io/"


@dataclass(frozen=True)
class User:
    """An authenticated caller, as the TokenReview reported it."""

    name: str
    uid: str
    groups: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...]
    # `identity_key`, made once: it is part of the decision looked up on every request.
    identity: Hashable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = (self.name, self.uid, tuple(sorted(self.groups)), self.extra)
        object.__setattr__(self, "identity", key)


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; raises Unauthenticated."""
    if not header:
        raise Unauthenticated("missing Authorization header: send 'Bearer <Kubernetes token>'")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Authorization must be 'Bearer <Kubernetes token>'")
    return token.strip()


def authenticated(review: dict[str, Any]) -> bool:
    return bool((review.get("status") or {}).get("authenticated"))


def user_from_review(review: dict[str, Any]) -> User:
    """The user of a TokenReview result; raises Unauthenticated when the token was rejected."""
    status = review.get("status") or {}
    if not status.get("authenticated"):
        reason = status.get("error") or "token not recognised by the API server"
        raise Unauthenticated(f"invalid bearer token: {reason}")
    info = status.get("user") or {}
    extra = tuple(sorted((k, tuple(v)) for k, v in (info.get("extra") or {}).items()))
    return User(
        name=str(info.get("username", "")),
        uid=str(info.get("uid", "")),
        groups=tuple(info.get("groups") or ()),
        extra=extra,
    )


def user_from_claims(claims: dict[str, Any]) -> User:
    """The user the API server's ServiceAccount authenticator makes of verified token claims:
    the same name, uid, groups and extra a TokenReview reports, so the decisions remembered for
    that identity apply (a field that differs only means no remembered decision: fail closed)."""
    k8s = claims["kubernetes.io"]
    namespace, account = str(k8s["namespace"]), k8s["serviceaccount"]
    extra: dict[str, tuple[str, ...]] = {}
    for kind in ("pod", "node"):
        bound = k8s.get(kind)
        if isinstance(bound, dict) and bound.get("name") and bound.get("uid"):
            extra[f"{SERVICEACCOUNT_EXTRA}{kind}-name"] = (str(bound["name"]),)
            extra[f"{SERVICEACCOUNT_EXTRA}{kind}-uid"] = (str(bound["uid"]),)
    if claims.get("jti"):  # Kubernetes 1.29+ names the credential
        extra[f"{SERVICEACCOUNT_EXTRA}credential-id"] = (f"JTI={claims['jti']}",)
    groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}",
              "system:authenticated")  # fmt: skip
    uid = str(account.get("uid", ""))
    return User(str(claims["sub"]), uid, groups, tuple(sorted(extra.items())))


def identity_key(user: User) -> Hashable:
    """What a SubjectAccessReview's answer depends on besides the attributes (order-free)."""
    return user.identity


def decision_key(user: User, access: Access, namespace: str, name: str | None) -> Hashable:
    """What a remembered decision is looked up by: the identity and every input of the review's
    `resourceAttributes` (`access_spec`), without building the review for each request."""
    return (user.identity, namespace, access, name if access.named and name else None)


def access_spec(user: User, access: Access, namespace: str, name: str | None) -> dict[str, Any]:
    """The SubjectAccessReview spec asking whether `user` may do `access` in `namespace`."""
    attributes: dict[str, str] = {
        "namespace": namespace,
        "verb": access.verb,
        "group": GROUP,
        "resource": access.resource,
    }
    if access.subresource:
        attributes["subresource"] = access.subresource
    if access.named and name:
        attributes["name"] = name
    spec: dict[str, Any] = {
        "user": user.name,
        "groups": list(user.groups),
        "resourceAttributes": attributes,
    }
    if user.uid:
        spec["uid"] = user.uid
    if user.extra:
        spec["extra"] = {k: list(v) for k, v in user.extra}
    return spec


def allowed(review: dict[str, Any]) -> bool:
    status = review.get("status") or {}
    return bool(status.get("allowed")) and not status.get("denied")


def describe(user: User, spec: dict[str, Any]) -> str:
    """`user "u" ... create sandboxdeployments/invoke fn in namespace "ns"`, for messages."""
    attrs = spec["resourceAttributes"]
    resource = attrs["resource"] + (f"/{attrs['subresource']}" if "subresource" in attrs else "")
    target = f" {attrs['name']}" if "name" in attrs else ""
    return f'{attrs["verb"]} {resource}{target} in namespace "{attrs["namespace"]}"'


def check_allowed(review: dict[str, Any], user: User, spec: dict[str, Any]) -> None:
    """Raise Forbidden naming the missing permission unless the review allowed it."""
    if allowed(review):
        return
    status = review.get("status") or {}
    reason = f": {status['reason']}" if status.get("reason") else ""
    raise Forbidden(f'user "{user.name}" may not {describe(user, spec)}{reason}')


class AnswerCache:
    """Answers with the time they were given, kept `keep` seconds; bounded, oldest out first.
    `get` reports the age, so the caller (auth_policy) decides fresh, stale or too old."""

    def __init__(self, keep: float, size: int = 10000) -> None:
        self.keep, self.size = keep, size
        self._items: dict[Hashable, tuple[float, Any]] = {}

    def get(self, key: Hashable, now: float) -> tuple[Any, float] | None:
        found = self._items.get(key)
        if found is None:
            return None
        stored, value = found
        if now - stored >= self.keep:
            del self._items[key]
            return None
        return value, now - stored

    def put(self, key: Hashable, value: Any, now: float) -> None:
        if self.keep <= 0:
            return
        self._items.pop(key, None)
        while len(self._items) >= self.size:
            del self._items[next(iter(self._items))]
        self._items[key] = (now, value)

    def drop(self, key: Hashable) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class Reviewer(Protocol):
    async def token_review(self, token: str) -> dict[str, Any]: ...
    async def access_review(self, spec: dict[str, Any]) -> dict[str, Any]: ...


class ApiReviewer:
    """The two reviews as API calls; failures stay `nest_kube.ApiError`s, so the authorizer can
    tell "the API server did not answer" (status 0, 429, 5xx) from any other failure."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def _create(self, resource: Resource, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": resource.api_version, "kind": resource.kind, "spec": spec}
        return await self.api.create(resource, None, body)

    async def token_review(self, token: str) -> dict[str, Any]:
        return await self._create(TOKEN_REVIEWS, {"token": token})

    async def access_review(self, spec: dict[str, Any]) -> dict[str, Any]:
        return await self._create(SUBJECT_ACCESS_REVIEWS, spec)


class Authorizer:
    """Who the caller is and whether RBAC lets them: asked of the API server, remembered, and
    answered from memory or the token's signature (never guessed) while it cannot answer."""

    def __init__(
        self,
        reviewer: Reviewer,
        windows: Windows | None = None,
        keys: IssuerKeys | None = None,
        clock: Callable[[], float] = time.monotonic,
        review_timeout: float = REVIEW_TIMEOUT_SECONDS,
    ) -> None:
        self.reviewer, self.windows, self.keys = reviewer, windows or Windows(), keys
        self.clock, self.review_timeout = clock, review_timeout
        self.users = AnswerCache(self.windows.keep)
        self.decisions = AnswerCache(self.windows.keep)
        self.health = ApiHealth()
        self.answers: Counter[tuple[str, Answer]] = Counter()  # ("identity"|"access", how)

    async def authorize(
        self, header: str | None, access: Access, namespace: str, name: str | None
    ) -> User:
        token = bearer_token(header)
        user = await self._identify(token)
        await self._authorise(user, access, namespace, name)
        return user

    async def _ask(
        self, call: Callable[[], Awaitable[dict[str, Any]]], what: str
    ) -> dict[str, Any] | None:
        """The review's answer, or None when the API server did not (or is known not to)."""
        if not self.health.may_ask(self.clock()):
            return None
        try:
            found = await asyncio.wait_for(call(), self.review_timeout)
        except (ApiError, GatewayError, OSError, TimeoutError) as exc:
            if not is_outage(exc):
                if isinstance(exc, ApiError):  # e.g. the gateway's own credentials refused
                    raise api_error(exc, what) from exc
                raise
            if not self.health.down:
                reason = str(exc) or type(exc).__name__
                log.warning("API server did not answer a %s (%s): answering from memory "
                            "and local token verification", what, reason)  # fmt: skip
            self.health.failed(self.clock())
            return None
        if self.health.down:
            log.info("API server answers again: reviews resume")
        self.health.answered()
        return found

    def _unavailable(self, detail: str) -> AuthUnavailable:
        retry = self.health.retry_after(self.clock())
        return AuthUnavailable(f"{detail}; retry in {retry}s", retry)

    async def _identify(self, token: str) -> User:
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self.users.get(digest, self.clock())
        age = None if cached is None else cached[1]
        review: Review | None = None
        found: dict[str, Any] | None = None
        verification: Verification | None = None
        if must_ask(age, self.windows):
            found = await self._ask(lambda: self.reviewer.token_review(token), "token review")
            if found is None:
                review = Review.UNREACHABLE
                verification = self.keys.verify(token) if self.keys is not None else None
            else:
                review = Review.YES if authenticated(found) else Review.NO
        local = None if verification is None else verification.local
        answer = identity_answer(age, self.windows, review, local)
        self.answers["identity", answer] += 1
        if answer in (Answer.CACHED, Answer.STALE):
            assert cached is not None
            user: User = cached[0]
            return user
        if answer is Answer.REVIEWED:
            assert found is not None
            user = user_from_review(found)
            self.users.put(digest, user, self.clock())
            return user
        if answer is Answer.LOCAL:
            assert verification is not None
            return user_from_claims(verification.claims)
        if answer is Answer.REFUSED:
            self.users.drop(digest)
            if found is not None:
                user_from_review(found)  # raises Unauthenticated with the API server's reason
            reason = verification.reason if verification is not None else "refused"
            raise Unauthenticated(f"invalid bearer token: {reason}")
        why = verification.reason if verification is not None else "no issuer keys configured"
        raise self._unavailable(
            "the API server cannot review the bearer token now, and it is neither one reviewed "
            f"in the last {self.windows.keep:.0f}s nor verifiable locally ({why})"
        )

    async def _authorise(
        self, user: User, access: Access, namespace: str, name: str | None
    ) -> None:
        key = decision_key(user, access, namespace, name)
        cached = self.decisions.get(key, self.clock())
        age = None if cached is None else cached[1]
        review: Review | None = None
        found: dict[str, Any] | None = None
        spec: dict[str, Any] = {}  # the review, made when it is asked or named in an answer
        if must_ask(age, self.windows):
            spec = access_spec(user, access, namespace, name)
            found = await self._ask(lambda: self.reviewer.access_review(spec), "access review")
            review = Review.UNREACHABLE if found is None else (
                Review.YES if allowed(found) else Review.NO)  # fmt: skip
        answer = access_answer(age, self.windows, review)
        self.answers["access", answer] += 1
        if answer is Answer.REVIEWED:
            self.decisions.put(key, True, self.clock())
        elif answer is Answer.REFUSED:
            self.decisions.drop(key)
            assert found is not None
            check_allowed(found, user, spec)  # raises Forbidden naming the permission
        elif answer is Answer.UNAVAILABLE:
            spec = spec or access_spec(user, access, namespace, name)
            raise self._unavailable(
                f'the API server cannot review whether user "{user.name}" may '
                f"{describe(user, spec)} now, and it allowed that no more than "
                f"{self.windows.keep:.0f}s ago"
            )

    async def lifecycle(self, _app: object) -> AsyncIterator[None]:
        """For `aiohttp.web.Application.cleanup_ctx`: fetch and refresh the issuer keys while
        the gateway runs, so they are there when the API server is not."""
        task = asyncio.create_task(self.keys.run()) if self.keys is not None else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            fetch = self.keys.fetch if self.keys is not None else None
            if isinstance(fetch, HttpFetch):
                await fetch.close()


def authorizer_for(api: Api, fresh_seconds: float, policy: OutagePolicy) -> Authorizer:
    """The gateway's authorizer on `api`; local JWT verification needs an `HttpApi` (the key
    documents are not resources, so only a real connection can fetch them)."""
    keys = None
    if policy.local_jwt and isinstance(api, HttpApi):
        keys = IssuerKeys(HttpFetch(api.connection), policy.audiences)
    windows = Windows(fresh_seconds, policy.stale_seconds)
    return Authorizer(ApiReviewer(api), windows, keys)

"""Authentication and authorisation decided by Kubernetes, not by the gateway.

A caller presents a bearer token. A TokenReview tells who it is (user, groups, extra); a
SubjectAccessReview for that user and the operation's verb/resource/subresource in the
function's namespace tells whether cluster RBAC allows it. The gateway keeps no user database
and no policy of its own, so `kubectl create rolebinding` is all it takes to grant a platform
access. Positive answers are cached briefly (keyed by a hash of the token, never the token) so
a stream of invocations does not cost two API calls each; negative answers are never cached, so
a newly granted right works at once.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from crds.constants import GROUP
from gateway.errors import Forbidden, Unauthenticated
from gateway.routes import Access


@dataclass(frozen=True)
class User:
    """An authenticated caller, as the TokenReview reported it."""

    name: str
    uid: str
    groups: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...]


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; raises Unauthenticated."""
    if not header:
        raise Unauthenticated("missing Authorization header: send 'Bearer <Kubernetes token>'")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Authorization must be 'Bearer <Kubernetes token>'")
    return token.strip()


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


def check_allowed(review: dict[str, Any], user: User, spec: dict[str, Any]) -> None:
    """Raise Forbidden naming the missing permission unless the review allowed it."""
    status = review.get("status") or {}
    if status.get("allowed") and not status.get("denied"):
        return
    attrs = spec["resourceAttributes"]
    resource = attrs["resource"] + (f"/{attrs['subresource']}" if "subresource" in attrs else "")
    target = f" {attrs['name']}" if "name" in attrs else ""
    reason = f": {status['reason']}" if status.get("reason") else ""
    raise Forbidden(
        f'user "{user.name}" may not {attrs["verb"]} {resource}{target} '
        f'in namespace "{attrs["namespace"]}"{reason}'
    )


class TtlCache:
    """Remembers values for `ttl` seconds; bounded, dropping the oldest entries first."""

    def __init__(
        self, ttl: float, size: int = 10000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl, self.size, self.clock = ttl, size, clock
        self._items: dict[Hashable, tuple[float, Any]] = {}

    def get(self, key: Hashable) -> Any | None:
        found = self._items.get(key)
        if found is None:
            return None
        expires, value = found
        if expires <= self.clock():
            del self._items[key]
            return None
        return value

    def put(self, key: Hashable, value: Any) -> None:
        if self.ttl <= 0:
            return
        self._items.pop(key, None)
        while len(self._items) >= self.size:
            del self._items[next(iter(self._items))]
        self._items[key] = (self.clock() + self.ttl, value)


class Reviewer(Protocol):
    async def token_review(self, token: str) -> dict[str, Any]: ...
    async def access_review(self, spec: dict[str, Any]) -> dict[str, Any]: ...


class Authorizer:
    """Asks the API server who the caller is and whether RBAC lets them; caches yes briefly."""

    def __init__(self, reviewer: Reviewer, ttl: float = 10.0) -> None:
        self.reviewer = reviewer
        self.users = TtlCache(ttl)
        self.allowed = TtlCache(ttl)

    async def authorize(
        self, header: str | None, access: Access, namespace: str, name: str | None
    ) -> User:
        token = bearer_token(header)
        digest = hashlib.sha256(token.encode()).hexdigest()
        user: User | None = self.users.get(digest)
        if user is None:
            user = user_from_review(await self.reviewer.token_review(token))
            self.users.put(digest, user)
        spec = access_spec(user, access, namespace, name)
        attrs = spec["resourceAttributes"]
        key = (digest, *sorted(attrs.items()))
        if self.allowed.get(key) is None:
            check_allowed(await self.reviewer.access_review(spec), user, spec)
            self.allowed.put(key, True)
        return user

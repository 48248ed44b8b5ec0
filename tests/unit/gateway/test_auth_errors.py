"""Bearer parsing, review interpretation, the answer cache, and RFC 7807 problems."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.auth import (
    AnswerCache,
    Authorizer,
    User,
    access_spec,
    bearer_token,
    check_allowed,
    user_from_review,
)
from gateway.auth_policy import Windows
from gateway.errors import Forbidden, NotFound, QueueFull, Unauthenticated, invalid, problem
from gateway.routes import INVOKE_SUBRESOURCE, ROUTES, Access
from nest_api import models as m

USER = User("system:serviceaccount:ns:app", "u1", ("system:serviceaccounts",), ())
REVIEWED = {"status": {"authenticated": True, "user": {"username": USER.name, "uid": "u1",
                                                       "groups": list(USER.groups)}}}  # fmt: skip


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "token"])
def test_a_missing_or_malformed_header_is_unauthenticated(header: str | None) -> None:
    with pytest.raises(Unauthenticated):
        bearer_token(header)


def test_bearer_token_is_extracted() -> None:
    assert bearer_token("Bearer abc.def") == "abc.def"
    assert bearer_token("bearer  xyz ") == "xyz"


def test_token_review_result() -> None:
    assert user_from_review(REVIEWED) == USER
    with pytest.raises(Unauthenticated, match="invalid bearer token: expired"):
        user_from_review({"status": {"authenticated": False, "error": "expired"}})


def test_invoke_is_create_on_the_invoke_subresource_of_the_function() -> None:
    spec = access_spec(USER, Access("create", subresource=INVOKE_SUBRESOURCE), "ns", "fn")
    assert spec["resourceAttributes"] == {
        "namespace": "ns", "verb": "create", "group": "nest.sandbox.dev",
        "resource": "sandboxdeployments", "subresource": "invoke", "name": "fn",
    }  # fmt: skip
    assert spec["user"] == USER.name and spec["groups"] == list(USER.groups)
    listing = access_spec(USER, Access("list", named=False), "ns", "fn")
    assert "name" not in listing["resourceAttributes"]


def test_denial_names_user_verb_and_resource() -> None:
    spec = access_spec(USER, Access("create", subresource=INVOKE_SUBRESOURCE), "ns", "fn")
    check_allowed({"status": {"allowed": True}}, USER, spec)
    with pytest.raises(Forbidden) as caught:
        check_allowed({"status": {"allowed": False}}, USER, spec)
    assert caught.value.detail == (
        f'user "{USER.name}" may not create sandboxdeployments/invoke fn in namespace "ns"'
    )


def test_answer_cache_reports_ages_expires_and_stays_bounded() -> None:
    cache = AnswerCache(keep=10, size=2)
    cache.put("a", 1, now=0)
    cache.put("b", 2, now=1)
    cache.put("c", 3, now=2)
    assert (cache.get("a", 3), cache.get("b", 3), cache.get("c", 3)) == (None, (2, 2), (3, 1))
    assert cache.get("b", 11) is None and len(cache) == 1
    cache.drop("c")
    assert cache.get("c", 3) is None


class Reviews:
    """Scripted review answers (the API server itself is exercised by the integration tests)."""

    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.calls: list[str] = []

    async def token_review(self, token: str) -> dict[str, Any]:
        self.calls.append("token")
        return REVIEWED

    async def access_review(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("access")
        return {"status": {"allowed": self.allowed}}


async def test_yes_is_cached_and_no_is_asked_again() -> None:
    reviews = Reviews(allowed=True)
    authorizer = Authorizer(reviews, Windows(fresh=60))
    access = Access("get")
    assert await authorizer.authorize("Bearer t", access, "ns", "fn") == USER
    await authorizer.authorize("Bearer t", access, "ns", "fn")
    assert reviews.calls == ["token", "access"]
    await authorizer.authorize("Bearer t", access, "ns", "other")
    assert reviews.calls == ["token", "access", "access"]
    reviews.allowed = False
    for _ in range(2):
        with pytest.raises(Forbidden):
            await authorizer.authorize("Bearer t", Access("delete"), "ns", "fn")
    assert reviews.calls.count("access") == 4


def test_problem_json_names_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        m.FunctionCreate.model_validate({"name": "x", "handler": "bad", "files": {"a.py": ""}})
    error = invalid(caught.value, "body")
    found = problem(error, "/v1/namespaces/ns/functions")
    assert found.status == 422
    assert found.body["type"].endswith("/invalid")
    assert found.body["errors"][0]["field"] == "handler"
    assert "handler" in found.body["detail"]
    assert found.body["instance"] == "/v1/namespaces/ns/functions"


def test_problem_statuses() -> None:
    assert problem(NotFound("x")).status == 404
    assert problem(QueueFull("x")).status == 503
    assert problem(Unauthenticated("x")).headers["WWW-Authenticate"].startswith("Bearer")


def test_every_route_checks_a_nest_resource() -> None:
    ids = [r.operation_id for r in ROUTES]
    assert len(ids) == len(set(ids))
    for route in ROUTES:
        assert route.access.verb in {"get", "list", "create", "update", "delete", "patch"}

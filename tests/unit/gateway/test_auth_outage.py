"""The authorizer's shell when the API server goes away, on `FakeApi` with injected failures.

`ReviewingApi` answers TokenReviews and SubjectAccessReviews as the API server would (tokens
and grants set by the test); `fail("create", ...)` makes it stop answering (Unreachable) or
answer 500, as during the outage of issue 13. First the authorizer alone with a test clock,
then a whole gateway (`create_app`) served on 127.0.0.1 in front of a stub runtime: a caller
seen before still reaches its function, an unknown caller gets 503 with Retry-After, never 500.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import GATEWAY_KEY, INFORMERS_KEY, Options, create_app
from gateway.auth import ApiReviewer, Authorizer
from gateway.auth_policy import Answer, AuthUnavailable, Windows
from gateway.errors import Forbidden, Unauthenticated, Upstream
from gateway.jwks import IssuerKeys
from gateway.routes import INVOKE_SUBRESOURCE, Access
from nest_kube import ApiError, Unreachable
from nest_kube.fake import FakeApi
from nest_kube.resources import (
    SANDBOX_DEPLOYMENTS,
    SANDBOX_ENDPOINTS,
    SUBJECT_ACCESS_REVIEWS,
    TOKEN_REVIEWS,
    Resource,
)
from tests.unit.gateway.test_auth_jwks import DISCOVERY, JWKS, NOW, token
from tests.unit.kube.support import eventually

NS = "team-a"
INVOKE = Access("create", subresource=INVOKE_SUBRESOURCE)
APP = "system:serviceaccount:team-a:app"
POD_EXTRA = {
    "authentication.kubernetes.io/pod-name": ["app-1"],
    "authentication.kubernetes.io/pod-uid": ["pod-uid"],
}
GROUPS = ["system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated"]


class ReviewingApi(FakeApi):
    """A FakeApi that reviews: `tokens` maps a token to its user, `grants` holds
    (user, verb, resource[/subresource], namespace) that RBAC allows."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[str, dict[str, Any]] = {}
        self.grants: set[tuple[str, str, str, str]] = set()
        self.reviews: Counter[str] = Counter()

    def user(self, token: str, name: str, extra: dict[str, list[str]] | None = None) -> None:
        self.tokens[token] = {"username": name, "uid": "sa-uid", "groups": GROUPS,
                              "extra": extra or {}}  # fmt: skip

    async def create(
        self, resource: Resource, namespace: str | None, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        if resource not in (TOKEN_REVIEWS, SUBJECT_ACCESS_REVIEWS):
            return await super().create(resource, namespace, body)
        self._check("create")  # the failures a test injected
        self.reviews[resource.kind] += 1
        spec = body["spec"]
        if resource == TOKEN_REVIEWS:
            user = self.tokens.get(spec["token"])
            status = {"authenticated": True, "user": user} if user else {"authenticated": False}
            return {**body, "status": status}
        attrs = spec["resourceAttributes"]
        what = attrs["resource"] + (f"/{attrs['subresource']}" if "subresource" in attrs else "")
        granted = (spec["user"], attrs["verb"], what, attrs["namespace"]) in self.grants
        return {**body, "status": {"allowed": granted}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def setup(keys: IssuerKeys | None = None) -> tuple[ReviewingApi, Authorizer, Clock]:
    api, clock = ReviewingApi(), Clock()
    api.user("known", APP)
    api.grants.add((APP, "create", "sandboxdeployments/invoke", NS))
    authorizer = Authorizer(ApiReviewer(api), Windows(10, 300), keys, clock=clock)
    return api, authorizer, clock


@pytest.mark.parametrize("outage", [Unreachable("connection refused"), ApiError(500, "Internal")])
async def test_a_caller_seen_before_is_served_for_the_stale_window_and_no_longer(
    outage: ApiError,
) -> None:
    api, authorizer, clock = setup()
    assert (await authorizer.authorize("Bearer known", INVOKE, NS, "fn")).name == APP
    api.fail("create", outage, times=1000)
    clock.now += 20  # past the 10 s freshness: the API server is asked, and does not answer
    assert (await authorizer.authorize("Bearer known", INVOKE, NS, "fn")).name == APP
    assert authorizer.answers["identity", Answer.STALE] == 1
    assert authorizer.answers["access", Answer.STALE] == 1
    asked = api._failures["create"]
    before = len(asked)
    await authorizer.authorize("Bearer known", INVOKE, NS, "fn")
    assert len(asked) == before  # known down: answered from memory without waiting on it
    with pytest.raises(AuthUnavailable) as unknown:
        await authorizer.authorize("Bearer stranger", INVOKE, NS, "fn")
    assert unknown.value.status == 503 and int(unknown.value.headers["Retry-After"]) >= 1
    with pytest.raises(AuthUnavailable, match="may create sandboxdeployments/invoke other"):
        await authorizer.authorize("Bearer known", INVOKE, NS, "other")  # never decided: 503
    clock.now += 300  # 320 s after the last answer: beyond fresh + stale
    with pytest.raises(AuthUnavailable):
        await authorizer.authorize("Bearer known", INVOKE, NS, "fn")


async def test_when_the_api_server_answers_again_its_no_wins_at_once() -> None:
    api, authorizer, clock = setup()
    await authorizer.authorize("Bearer known", INVOKE, NS, "fn")
    del api.tokens["known"]  # revoked
    clock.now += 20
    with pytest.raises(Unauthenticated, match="invalid bearer token"):
        await authorizer.authorize("Bearer known", INVOKE, NS, "fn")
    api.fail("create", Unreachable("refused"), times=10)
    clock.now += 5  # the revoked token's old yes is forgotten, not stale
    with pytest.raises(AuthUnavailable):
        await authorizer.authorize("Bearer known", INVOKE, NS, "fn")


async def test_a_withdrawn_grant_is_forbidden_and_forgotten() -> None:
    api, authorizer, clock = setup()
    await authorizer.authorize("Bearer known", INVOKE, NS, "fn")
    api.grants.clear()
    clock.now += 20
    with pytest.raises(Forbidden):
        await authorizer.authorize("Bearer known", INVOKE, NS, "fn")
    api.fail("create", Unreachable("refused"), times=10)
    clock.now += 5
    with pytest.raises(AuthUnavailable, match="may create"):
        await authorizer.authorize("Bearer known", INVOKE, NS, "fn")


async def test_recovery_is_probed_after_the_back_off() -> None:
    api, authorizer, clock = setup()
    await authorizer.authorize("Bearer known", INVOKE, NS, "fn")
    api.fail("create", Unreachable("refused"), times=1)
    clock.now += 20
    await authorizer.authorize("Bearer known", INVOKE, NS, "fn")  # stale, and now known down
    assert authorizer.health.down
    clock.now += 2  # past the first back-off: the next request probes, and it answers
    reviews = sum(api.reviews.values())
    await authorizer.authorize("Bearer known", INVOKE, NS, "fn")
    assert not authorizer.health.down and sum(api.reviews.values()) == reviews + 2


async def test_the_gateways_own_credentials_refused_is_a_502_not_an_outage() -> None:
    api, authorizer, _ = setup()
    api.fail("create", ApiError(403, "Forbidden", {"message": "tokenreviews is forbidden"}))
    with pytest.raises(Upstream, match="403"):
        await authorizer.authorize("Bearer known", INVOKE, NS, "fn")
    assert not authorizer.health.down


async def test_a_review_that_hangs_counts_as_no_answer() -> None:
    class Hanging:
        async def token_review(self, token: str) -> dict[str, Any]:
            await asyncio.Event().wait()  # never answers; the authorizer's timeout ends it
            raise AssertionError("unreachable")

        async def access_review(self, spec: dict[str, Any]) -> dict[str, Any]:
            raise AssertionError("not asked")

    authorizer = Authorizer(Hanging(), Windows(10, 300), review_timeout=0.01)
    with pytest.raises(AuthUnavailable):
        await authorizer.authorize("Bearer t", INVOKE, NS, "fn")
    assert authorizer.health.down


async def fetched_keys() -> IssuerKeys:
    async def documents(path: str) -> dict[str, Any]:
        return DISCOVERY if path.startswith("/.well-known") else JWKS

    keys = IssuerKeys(documents, clock=lambda: NOW)
    await keys.refresh()
    return keys


async def test_a_rotated_token_is_verified_locally_and_keeps_its_identitys_decisions() -> None:
    api, authorizer, clock = setup(await fetched_keys())
    first, rotated = token(), token(iat=int(NOW))  # the same pod's token, renewed
    assert first != rotated
    api.user(first, APP, POD_EXTRA)  # the API server's user for it has the pod in extra
    await authorizer.authorize(f"Bearer {first}", INVOKE, NS, "fn")
    api.fail("create", Unreachable("refused"), times=1000)
    clock.now += 20
    user = await authorizer.authorize(f"Bearer {rotated}", INVOKE, NS, "fn")
    assert user.name == APP
    assert authorizer.answers["identity", Answer.LOCAL] == 1
    assert authorizer.answers["access", Answer.STALE] == 1
    ci = {"namespace": "team-a", "serviceaccount": {"name": "ci", "uid": "u2"}}
    other = token(sub="system:serviceaccount:team-a:ci", k8s=ci)
    with pytest.raises(AuthUnavailable, match="ci"):  # proven identity, no decision: 503
        await authorizer.authorize(f"Bearer {other}", INVOKE, NS, "fn")
    with pytest.raises(Unauthenticated, match="expired"):
        await authorizer.authorize(f"Bearer {token(exp=int(NOW) - 3600)}", INVOKE, NS, "fn")


# -- the whole gateway, in-process ---------------------------------------------------------------


def stub_runtime() -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"ran": request.match_info["id"]})

    app = web.Application()
    app.router.add_route("*", "/v1/sandboxes/{id}/invoke", handle)
    return app


@pytest.fixture
async def served() -> AsyncIterator[tuple[ReviewingApi, TestClient[Any, Any]]]:
    runtime = TestServer(stub_runtime(), host="127.0.0.1")
    await runtime.start_server()
    api = ReviewingApi()
    api.user("known", APP)
    api.grants.add((APP, "create", "sandboxdeployments/invoke", NS))
    api.put(SANDBOX_DEPLOYMENTS, {"metadata": {"name": "echo", "namespace": NS},
                                  "spec": {"replicas": 1}})  # fmt: skip
    ready = [{"podIP": "127.0.0.1", "port": runtime.port, "uid": "u1", "sandbox": "echo-1"}]
    api.put(SANDBOX_ENDPOINTS, {"metadata": {"name": "echo", "namespace": NS},
                                "status": {"ready": ready}})  # fmt: skip
    # Freshness 0: every request asks the API server, so every request meets the outage.
    options = Options(auth=True, auth_cache_seconds=0.0)
    app = create_app(api, options)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    informers = app[INFORMERS_KEY]
    await eventually(lambda: all(i.synced.is_set() for i in informers), what="informers")
    invoker = app[GATEWAY_KEY].invoker
    await eventually(lambda: invoker.table.pick((NS, "echo"), set()), what="a ready sandbox")
    yield api, client
    await client.close()
    await runtime.close()


@pytest.mark.parametrize("outage", [Unreachable("connection refused"), ApiError(500, "Internal")])
async def test_the_data_plane_keeps_answering_known_callers_while_the_api_server_is_down(
    served: tuple[ReviewingApi, TestClient[Any, Any]], outage: ApiError
) -> None:
    api, client = served
    url = f"/v1/namespaces/{NS}/functions/echo:invoke"
    known = {"Authorization": "Bearer known"}
    first = await client.post(url, json={}, headers=known)
    assert first.status == 200, await first.text()
    api.fail("create", outage, times=1000)
    for _ in range(3):
        again = await client.post(url, json={}, headers=known)
        assert again.status == 200, await again.text()
        assert await again.json() == {"ran": "u1"}
    stranger = await client.post(url, json={}, headers={"Authorization": "Bearer stranger"})
    assert stranger.status == 503, await stranger.text()
    assert int(stranger.headers["Retry-After"]) >= 1
    assert stranger.content_type == "application/problem+json"
    assert (await stranger.json())["type"].endswith("/auth-unavailable")
    missing = await client.post(url, json={})
    assert missing.status == 401  # no token at all is still the caller's to fix

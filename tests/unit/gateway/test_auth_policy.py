"""The outage policy as tables: what the gateway answers given the age of what it remembers,
what the API server said (or that it said nothing) and what local verification found."""

from __future__ import annotations

import pytest

from gateway.auth_policy import (
    Answer,
    ApiHealth,
    AuthUnavailable,
    Local,
    Review,
    Windows,
    access_answer,
    identity_answer,
    is_outage,
    must_ask,
)
from gateway.errors import Upstream, problem
from gateway.main import build_parser
from nest_kube import ApiError, Unreachable

W = Windows(fresh=10, stale=300)  # a "yes" is used alone for 10 s, and up to 310 s in an outage
YES, NO, DOWN = Review.YES, Review.NO, Review.UNREACHABLE
OK, NOPE, BAD = Local.VERIFIED, Local.UNVERIFIABLE, Local.INVALID


@pytest.mark.parametrize(
    ("age", "review", "local", "answer"),
    [
        (5, None, None, Answer.CACHED),  # fresh: nobody is asked
        (None, YES, None, Answer.REVIEWED),
        (20, YES, None, Answer.REVIEWED),
        (20, NO, None, Answer.REFUSED),  # revoked: the API server's no beats the memory
        (None, NO, OK, Answer.REFUSED),  # whenever it answers, the API server is the authority
        (20, DOWN, NOPE, Answer.STALE),  # outage: its yes of 20 s ago stands
        (309.9, DOWN, NOPE, Answer.STALE),
        (310, DOWN, NOPE, Answer.UNAVAILABLE),  # ... for fresh + stale seconds, not longer
        (None, DOWN, NOPE, Answer.UNAVAILABLE),  # never seen, not verifiable: 503
        (None, DOWN, None, Answer.UNAVAILABLE),  # no keys configured at all
        (None, DOWN, OK, Answer.LOCAL),  # never seen, but signed by the issuer: who it is
        (400, DOWN, OK, Answer.LOCAL),
        (20, DOWN, OK, Answer.STALE),  # the API server's own user for this token is preferred
        (20, DOWN, BAD, Answer.REFUSED),  # expired or forged: remembered or not, 401
        (None, DOWN, BAD, Answer.REFUSED),
    ],
)
def test_identity(
    age: float | None, review: Review | None, local: Local | None, answer: Answer
) -> None:
    assert identity_answer(age, W, review, local) is answer


@pytest.mark.parametrize(
    ("age", "review", "answer"),
    [
        (0, None, Answer.CACHED),
        (9.9, None, Answer.CACHED),
        (None, YES, Answer.REVIEWED),
        (10, YES, Answer.REVIEWED),
        (10, NO, Answer.REFUSED),
        (10, DOWN, Answer.STALE),
        (309, DOWN, Answer.STALE),
        (310, DOWN, Answer.UNAVAILABLE),
        (None, DOWN, Answer.UNAVAILABLE),  # a verified identity with no decision: 503
    ],
)
def test_access(age: float | None, review: Review | None, answer: Answer) -> None:
    assert access_answer(age, W, review) is answer


def test_no_stale_window_means_every_outage_is_a_503() -> None:
    strict = Windows(fresh=10, stale=0)
    assert access_answer(11, strict, DOWN) is Answer.UNAVAILABLE
    assert identity_answer(11, strict, DOWN, NOPE) is Answer.UNAVAILABLE
    assert must_ask(10, strict) and not must_ask(9, strict) and must_ask(None, strict)


def test_a_stale_memory_cannot_skip_the_question() -> None:
    with pytest.raises(ValueError):
        identity_answer(20, W, None, None)
    with pytest.raises(ValueError):
        access_answer(None, W, None)


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (Unreachable("connection refused"), True),
        (ApiError(500, "InternalError"), True),
        (ApiError(503, "ServiceUnavailable"), True),
        (ApiError(429, "TooManyRequests"), True),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (ApiError(403, "Forbidden"), False),  # the gateway's own rights: an answer, not an outage
        (ApiError(401, "Unauthorized"), False),
        (ValueError("a bug"), False),
    ],
)
def test_what_counts_as_no_answer(error: BaseException, outage: bool) -> None:
    assert is_outage(error) is outage


def test_an_upstream_error_is_judged_by_its_api_cause() -> None:
    for cause, outage in ((Unreachable("x"), True), (ApiError(403, "Forbidden"), False)):
        try:
            raise Upstream("token review failed") from cause
        except Upstream as exc:
            assert is_outage(exc) is outage
    assert not is_outage(Upstream("no cause"))


def test_health_backs_off_and_lets_one_probe_through() -> None:
    health = ApiHealth(base=1, cap=4)
    assert health.may_ask(0) and health.may_ask(0)  # up: everyone asks
    health.failed(100)
    assert health.down and health.retry_after(100) == 1
    assert not health.may_ask(100.5)  # within the back-off: answer from memory
    assert health.may_ask(101)  # the probe ...
    assert not health.may_ask(101)  # ... and only one
    health.failed(101)
    assert health.retry_after(101) == 2
    health.failed(103)
    health.failed(107)
    assert health.retry_after(107) == 4  # capped
    health.answered()
    assert not health.down and health.may_ask(107) and health.retry_after(107) == 1


def test_unavailable_is_a_503_with_retry_after() -> None:
    found = problem(AuthUnavailable("the API server is away", 3), "/fn/a/b")
    assert found.status == 503 and found.headers["Retry-After"] == "3"
    assert found.body["type"].endswith("/auth-unavailable")


def test_the_outage_flags() -> None:
    parse = build_parser({"NEST_GATEWAY_AUTH_STALE_SECONDS": "60"}).parse_args
    args = parse(["--auth-audience", "a", "--auth-audience", "b"])
    assert (args.auth_stale_seconds, args.auth_audience, args.no_local_jwt) == (
        60,
        ["a", "b"],
        False,
    )
    strict = build_parser({"NEST_GATEWAY_LOCAL_JWT": "off"}).parse_args(
        ["--auth-stale-seconds", "0"]
    )
    assert (strict.auth_stale_seconds, strict.auth_audience, strict.no_local_jwt) == (0, None, True)

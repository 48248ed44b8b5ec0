"""The invocation hot path's shortcuts give what the long way gives (issue 14.3, gateway cost).

Each shortcut (the forwarding signature input worked out once per call, the answer's headers
copied then trimmed, metric children looked up once, a decision key without the review, the
header scans that use the multidict's own lookups) is checked against the computation it
replaced, so a cheaper path can never sign, forward or count something else.
"""

from __future__ import annotations

import sys

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry

from gateway import main, retry
from gateway.auth import User, access_spec, decision_key
from gateway.invoke import (
    HOP_BY_HOP,
    Caller,
    Metrics,
    _kept,
    forwarding,
    invoke_call,
    trigger_call,
)
from gateway.routes import Access
from sandbox import dataplane_auth as auth

CALLER = Caller("gw.example:8090", "https", "10.1.2.3", "/fn/team-a/echo")
REQUEST = CIMultiDictProxy(
    CIMultiDict(
        [
            ("Host", "gw.example:8090"),
            ("x-forwarded-for", "192.0.2.1"),
            ("X-FORWARDED-FOR", "198.51.100.7"),
            ("X-Forwarded-Host", "evil.example"),
            ("Authorization", "Bearer t"),
            ("Content-Type", "text/plain"),
            ("Cookie", "a=1"),
            (auth.HEADER, "forged"),
        ]
    )
)


def generic(headers: dict[str, str]) -> str:
    """What `Invoker._try` computes for a call without `fwd` (and did for every call before)."""
    return auth.forwarded(CIMultiDict(headers), headers.items())


@pytest.mark.parametrize("caller", [CALLER, Caller("h", "http", "127.0.0.1")])
def test_invoke_call_signs_the_forwarding_headers_the_long_way_would(caller: Caller) -> None:
    call = invoke_call(REQUEST, b"{}", caller)
    assert call.fwd is not None and call.fwd != ""
    assert call.fwd == generic(dict(call.headers))


def test_invoke_call_without_a_caller_signs_no_forwarding() -> None:
    call = invoke_call(REQUEST, b"{}")
    assert call.fwd == "" == generic(dict(call.headers))


@pytest.mark.parametrize("strip_auth", [True, False])
def test_trigger_call_with_a_caller_signs_what_it_forwards(strip_auth: bool) -> None:
    call = trigger_call("POST", "a/b", "x=1", REQUEST, b"", strip_auth, caller=CALLER)
    assert call.fwd == generic(dict(call.headers))
    assert "evil.example" not in call.fwd  # the caller's own X-Forwarded-Host is not passed
    assert ("Authorization" in call.headers) is not strip_auth
    assert auth.HEADER not in call.headers


def test_trigger_call_without_a_caller_leaves_the_signature_input_to_each_attempt() -> None:
    # The caller's forwarding headers pass then; only the generic computation sees them all.
    call = trigger_call("POST", "a", "", REQUEST, b"", strip_auth=True)
    assert call.fwd is None


def test_forwarding_reads_a_multidict_as_it_reads_a_dict_of_pairs() -> None:
    plain = {"Host": "gw", "X-Forwarded-For": "192.0.2.1"}
    assert forwarding(CIMultiDict(plain), CALLER) == forwarding(plain, CALLER)
    both = forwarding(REQUEST, CALLER)["X-Forwarded-For"]
    assert both == "192.0.2.1, 198.51.100.7, 10.1.2.3"  # every hop, in order, then the caller


def old_kept(headers: CIMultiDict[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


def test_kept_answer_headers_are_the_filtered_pairs_in_order() -> None:
    answer = CIMultiDict(
        [
            ("Content-Type", "application/json"),
            ("Set-Cookie", "a=1"),
            ("connection", "keep-alive"),
            ("Transfer-Encoding", "chunked"),
            ("Set-Cookie", "b=2"),
            ("Content-Length", "2"),
            ("X-Custom", "v"),
            ("Keep-Alive", "timeout=5"),
        ]
    )
    kept = _kept(CIMultiDictProxy(answer))
    assert list(kept.items()) == list(old_kept(answer).items())
    assert kept.getall("Set-Cookie") == ["a=1", "b=2"]
    assert "Content-Length" not in kept and "connection" not in kept


def test_metric_children_are_the_labelled_series() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    key = ("team-a", "echo")
    children = metrics.of(key)
    assert metrics.of(key) is children
    children.requests(200).inc()
    children.requests(200).inc()
    children.requests(503).inc()
    children.latency.observe(0.002)
    children.in_flight.inc()
    labels = {"namespace": "team-a", "function": "echo"}
    value = registry.get_sample_value
    assert value("nest_gateway_requests_total", {**labels, "code": "200"}) == 2
    assert value("nest_gateway_requests_total", {**labels, "code": "503"}) == 1
    assert value("nest_gateway_request_duration_seconds_count", labels) == 1
    assert value("nest_gateway_in_flight", labels) == 1
    metrics.forget(key)  # a deleted function: looked up afresh, the same series
    metrics.of(key).requests(200).inc()
    assert value("nest_gateway_requests_total", {**labels, "code": "200"}) == 3


USER = User("alice", "u1", ("b", "a"), (("k", ("v",)),))


def test_decision_keys_differ_exactly_when_the_reviews_do() -> None:
    invoke = Access("create", subresource="invoke")
    listing = Access("list", named=False)
    cases = [
        (invoke, "ns", "fn"), (invoke, "ns", "other"), (invoke, "ns2", "fn"),
        (Access("get"), "ns", "fn"), (listing, "ns", "fn"), (listing, "ns", "other"),
        (Access("get", resource="sandboxes"), "ns", "fn"),
    ]  # fmt: skip
    for a in cases:
        for b in cases:
            same_review = access_spec(USER, *a) == access_spec(USER, *b)
            assert (decision_key(USER, *a) == decision_key(USER, *b)) is same_review, (a, b)
    reordered = User("alice", "u1", ("a", "b"), (("k", ("v",)),))
    assert decision_key(reordered, invoke, "ns", "fn") == decision_key(USER, invoke, "ns", "fn")


def test_replayable_reads_a_multidict_as_it_reads_any_mapping() -> None:
    for headers in ({"Idempotency-Key": "1"}, {"X-IDEMPOTENCY-KEY": "1"}, {"Other": "1"}):
        multi = CIMultiDictProxy(CIMultiDict(headers))
        assert retry.replayable("POST", multi) is retry.replayable("POST", headers)
    assert retry.replayable("POST", CIMultiDict({"idempotency-key": "x"}))
    assert not retry.replayable("POST", CIMultiDict({"Content-Type": "a"}))


def test_event_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert main.event_loop("asyncio") is None
    assert main.build_parser({}).parse_args([]).event_loop == "auto"
    env = {"NEST_GATEWAY_EVENT_LOOP": "asyncio"}
    assert main.build_parser(env).parse_args([]).event_loop == "asyncio"
    monkeypatch.setitem(sys.modules, "uvloop", None)  # not installed: import fails
    assert main.event_loop("auto") is None
    with pytest.raises(ImportError):
        main.event_loop("uvloop")


def test_event_loop_is_uvloops_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    loop = main.event_loop("auto")
    assert isinstance(loop, uvloop.Loop)
    loop.close()

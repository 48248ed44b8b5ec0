"""The data-plane signature covers the forwarding headers a runtime trusts, and nothing can move
between them and the body."""

from __future__ import annotations

from multidict import CIMultiDict

from sandbox import dataplane_auth as auth

RING = auth.KeyRing({"current": b"k" * 32})
PATH = "/v1/sandboxes/uid/http/x"


def fwd(*pairs: tuple[str, str]) -> str:
    headers = CIMultiDict(pairs)
    return auth.forwarded(headers, headers.items())


def verify(header: str, body: bytes, forwarded: str) -> str | None:
    return RING.verify(header, "POST", PATH, "uid", body, fwd=forwarded)


def test_without_forwarding_headers_nothing_changes() -> None:
    assert fwd(("Host", "a"), ("Accept", "*/*")) == ""
    header = RING.sign("POST", PATH, b"{}")
    assert verify(header, b"{}", "") is None


def test_the_forwarding_headers_are_covered_in_any_order_and_case() -> None:
    one = fwd(("Host", "gw"), ("X-Forwarded-Prefix", "/fn/a/b"), ("X-Forwarded-For", "127.0.0.3"))
    other = fwd(("x-forwarded-for", "127.0.0.3"), ("host", "gw"), ("x-forwarded-prefix", "/fn/a/b"))
    assert one == other != ""
    header = RING.sign("POST", PATH, b"{}", fwd=one)
    assert verify(header, b"{}", other) is None
    assert verify(header, b"{}", fwd(("Host", "gw"), ("X-Forwarded-Prefix", "/fn/x/y"))) is not None
    assert verify(header, b"{}", "") is not None  # stripped on the way: refused


def test_no_line_can_move_between_the_forwarding_headers_and_the_body() -> None:
    prefix = fwd(("X-Forwarded-Prefix", "/fn/a/b"))
    both = fwd(("X-Forwarded-Prefix", "/fn/a/b"), ("X-Forwarded-For", "127.0.0.3"))
    header = RING.sign("POST", PATH, b"{}", fwd=both)
    # Drop a header and carry its text at the head of the body instead: another request.
    assert verify(header, (both.removeprefix(prefix[:-1]) + "\n").encode() + b"{}", prefix)
    plain = RING.sign("POST", PATH, (prefix + "\n{}").encode())
    assert verify(plain, b"{}", prefix) == auth.BAD_SIGNATURE

"""Data-plane signatures (pure): what verifies, what is refused and why, and key rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import pytest

from sandbox import dataplane_auth as auth

NOW = 1_700_000_000.0
PATH = "/v1/sandboxes/6f1c-uid/invoke"
BODY = b'{"card": "4111"}'


@pytest.fixture
def ring() -> auth.KeyRing:
    return auth.KeyRing({"current": b"k" * 32})


def signed(ring: auth.KeyRing, method: str = "POST", path: str = PATH, body: bytes = BODY,
           now: float = NOW) -> str:  # fmt: skip
    return ring.sign(method, path, body, now=now)


def test_a_signed_request_verifies(ring: auth.KeyRing) -> None:
    header = signed(ring)
    assert header.startswith("v1 t=1700000000,k=")
    assert ring.verify(header, "POST", PATH, "6f1c-uid", BODY, now=NOW) is None


def test_the_header_carries_the_standard_hmac(ring: auth.KeyRing) -> None:
    header = signed(ring)
    head = f"v1\nPOST\n{PATH}\n1700000000\n6f1c-uid\n".encode()
    assert header.endswith("s=" + hmac.new(b"k" * 32, head + BODY, hashlib.sha256).hexdigest())


def test_the_sandbox_id_defaults_to_the_one_in_the_path(ring: auth.KeyRing) -> None:
    assert auth.sandbox_of(PATH) == "6f1c-uid"
    assert auth.sandbox_of("/v1/sandboxes/abc/http/x?y=1") == "abc"
    assert auth.sandbox_of("/metrics") == ""
    header = ring.sign("GET", "/metrics", now=NOW)
    assert ring.verify(header, "GET", "/metrics", "", b"", now=NOW) is None


@pytest.mark.parametrize("header", [None, ""])
def test_missing_header_is_refused(ring: auth.KeyRing, header: str | None) -> None:
    reason = ring.verify(header, "POST", PATH, "6f1c-uid", BODY, now=NOW)
    assert reason is not None and "missing X-Nest-Signature" in reason


@pytest.mark.parametrize(
    "header",
    [
        "Bearer abc",
        "v1 t=1700000000",
        "v1 t=1700000000,k=x,s=short",
        "v1 t=soon,k=x,s=" + "0" * 64,
        "v2 t=1700000000,k=x,s=" + "0" * 64,
        "v1 t=1700000000,k=x,s=" + "0" * 64 + ",extra=1",
    ],
)
def test_malformed_header_is_refused(ring: auth.KeyRing, header: str) -> None:
    reason = ring.verify(header, "POST", PATH, "6f1c-uid", BODY, now=NOW)
    assert reason is not None and "malformed" in reason


def test_wrong_key_is_refused(ring: auth.KeyRing) -> None:
    other = auth.KeyRing({"current": b"o" * 32})
    reason = ring.verify(signed(other), "POST", PATH, "6f1c-uid", BODY, now=NOW)
    assert reason is not None and "unknown key" in reason


def test_a_forged_mac_under_a_known_key_id_is_refused(ring: auth.KeyRing) -> None:
    header = signed(ring)
    forged = header[:-64] + ("0" if header[-64] != "0" else "1") + header[-63:]
    assert ring.verify(forged, "POST", PATH, "6f1c-uid", BODY, now=NOW) == auth.BAD_SIGNATURE


@pytest.mark.parametrize("offset", [-61, 61, -3600])
def test_expired_or_future_signatures_are_refused(ring: auth.KeyRing, offset: int) -> None:
    reason = ring.verify(signed(ring), "POST", PATH, "6f1c-uid", BODY, now=NOW + offset)
    assert reason is not None and "more than 60s" in reason


@pytest.mark.parametrize("offset", [-60, 0, 60])
def test_clock_skew_within_the_window_is_accepted(ring: auth.KeyRing, offset: int) -> None:
    assert ring.verify(signed(ring), "POST", PATH, "6f1c-uid", BODY, now=NOW + offset) is None


@pytest.mark.parametrize(
    ("method", "path", "sandbox", "body"),
    [
        ("POST", "/v1/sandboxes/victim-uid/invoke", "victim-uid", BODY),  # another sandbox
        ("POST", PATH, "victim-uid", BODY),  # same path, another routed id
        ("POST", "/v1/sandboxes/6f1c-uid/http/admin", "6f1c-uid", BODY),  # another route
        ("POST", PATH + "?debug=1", "6f1c-uid", BODY),  # another query
        ("PUT", PATH, "6f1c-uid", BODY),  # another method
        ("POST", PATH, "6f1c-uid", b'{"card": "5500"}'),  # another body
        ("GET", "/metrics", "", b""),  # the metrics listing
    ],
)
def test_a_signature_does_not_carry_over_to_another_request(
    ring: auth.KeyRing, method: str, path: str, sandbox: str, body: bytes
) -> None:
    header = signed(ring)
    assert ring.verify(header, method, path, sandbox, body, now=NOW) == auth.BAD_SIGNATURE


def test_rotation_every_key_verifies_and_current_signs() -> None:
    old, new = b"o" * 32, b"n" * 32
    before = auth.KeyRing({"current": old})
    during = auth.KeyRing({"current": new, "previous": old})
    after = auth.KeyRing({"current": new})
    for header in (signed(before), signed(during)):
        assert during.verify(header, "POST", PATH, "6f1c-uid", BODY, now=NOW) is None
    assert during.signing_id == auth.key_id(new)
    assert after.verify(signed(during), "POST", PATH, "6f1c-uid", BODY, now=NOW) is None
    assert after.verify(signed(before), "POST", PATH, "6f1c-uid", BODY, now=NOW) is not None


def test_key_rules() -> None:
    with pytest.raises(auth.DataplaneKeyError, match="shorter"):
        auth.KeyRing({"current": b"short"})
    with pytest.raises(auth.DataplaneKeyError):
        auth.KeyRing({})
    verify_only = auth.KeyRing({"next": b"a" * 32, "previous": b"b" * 32})
    assert verify_only.signing_id is None
    with pytest.raises(auth.DataplaneKeyError, match="no 'current' key"):
        verify_only.sign("GET", "/metrics")
    assert auth.KeyRing({"only": b"a" * 32}).signing_id == auth.key_id(b"a" * 32)
    assert len(auth.new_key()) == 32 and auth.new_key() != auth.new_key()


def test_load_a_file_a_secret_volume_directory_and_secret_data(tmp_path: Path) -> None:
    key = auth.write_key_file(tmp_path / "single")
    assert os.stat(tmp_path / "single").st_mode & 0o777 == 0o400
    assert auth.load(tmp_path / "single").signing_id == auth.key_id(key)
    # A Secret volume: files are links into a hidden timestamped directory.
    volume = tmp_path / "volume"
    data = volume / "..2024_01_01"
    data.mkdir(parents=True)
    (data / "current").write_bytes(b"c" * 32)
    (data / "previous").write_bytes(b"p" * 32)
    (volume / "..data").symlink_to(data.name)
    for name in ("current", "previous"):
        (volume / name).symlink_to(f"..data/{name}")
    ring = auth.load(volume)
    assert ring.names == ("current", "previous")
    assert ring.signing_id == auth.key_id(b"c" * 32)
    secret = {"current": base64.b64encode(b"c" * 32).decode()}
    assert auth.from_secret_data(secret).ids == {auth.key_id(b"c" * 32)}
    with pytest.raises(auth.DataplaneKeyError, match="cannot read"):
        auth.load(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(auth.DataplaneKeyError, match="holds no key"):
        auth.load(tmp_path / "empty")


def test_key_source_learns_a_rotated_key_on_first_use(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "current").write_bytes(b"c" * 32)
    source = auth.KeySource(keys, refresh_seconds=3600, min_reload_seconds=0)
    rotated = auth.KeyRing({"current": b"n" * 32})
    header = rotated.sign("GET", "/metrics")
    assert source.verify(header, "GET", "/metrics", "", b"") is not None
    (keys / "next").write_bytes(b"n" * 32)  # the rotation's first step reaches the verifier
    assert source.verify(header, "GET", "/metrics", "", b"") is None
    assert source.ring.signing_id == auth.key_id(b"c" * 32)  # it still signs with current


def test_key_source_keeps_its_keys_when_a_re_read_fails(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "current").write_bytes(b"c" * 32)
    source = auth.KeySource(keys, refresh_seconds=0, min_reload_seconds=0)
    (keys / "current").unlink()
    assert source.reload() is False
    header = auth.KeyRing({"current": b"c" * 32}).sign("GET", "/metrics")
    assert source.verify(header, "GET", "/metrics", "", b"") is None


def test_key_source_rate_limits_re_reads(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "current").write_bytes(b"c" * 32)
    source = auth.KeySource(keys, refresh_seconds=3600, min_reload_seconds=3600)
    header = auth.KeyRing({"current": b"n" * 32}).sign("GET", "/metrics")
    assert source.verify(header, "GET", "/metrics", "", b"") is not None  # re-read: not there
    (keys / "next").write_bytes(b"n" * 32)
    # Within the interval a second unknown key id does not cost another read...
    assert source.verify(header, "GET", "/metrics", "", b"") is not None
    # ...the periodic refresh (forced here) still picks the key up.
    assert source.reload(force=True) is True
    assert source.verify(header, "GET", "/metrics", "", b"") is None

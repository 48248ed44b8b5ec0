"""Data-plane request signatures: the runtime answers only callers holding the data-plane key.

Why: a pool pod's data plane (`podIP:8080/v1/sandboxes/<uid>/invoke`, `/metrics`) is reachable
by anything that can route to the pod, which would let any caller bypass the gateway's RBAC, and
`/metrics` would list every sandbox. The gateway (invocations) and the operator (autoscaler
scrapes) therefore sign every request with a shared key, and the runtime refuses what is not
signed. The key is a Secret (`nest-system/nest-dataplane-key`, 32 random bytes, created by the
operator) mounted 0400 root into the gateway and the runtime container only: sandboxes run as
other uids and cannot read it. `sandbox` is a lower layer, so gateway and operator import this.

One header, `X-Nest-Signature: v1 t=<unix seconds>,k=<key id>,s=<hex HMAC-SHA256>`, over

    "v1\\n" METHOD "\\n" raw path+query "\\n" t "\\n" sandbox id "\\n" body

- the sandbox id (the `{id}` of the path, empty for `/metrics`) and the path bind a signature to
  one sandbox and one operation: it cannot be replayed against another sandbox or route;
- the body binds it to one event: a signature seen by the function it was sent to (an HTTP
  trigger passes headers through) or by anyone on the path cannot carry another body. Without
  it, a captured signature would let its holder send any event to that sandbox for the skew
  window: the very RBAC bypass this module exists to close. Cost, measured on this machine
  (SHA-NI, ~0.9 GB/s): nothing measurable for a small event (the body goes into the same HMAC
  pass; a whole sign or verify is a few µs), ~1.1 ms per MiB on each side, against ~7 µs
  total without it. The body is MACed as is, not as a digest: one hash pass instead of two;
- the forwarding headers (`FORWARDING`: the caller's Host and the gateway's X-Forwarded-*,
  from which the runtime takes the function's root_path and client address) are covered when
  present, so a captured signature cannot carry another prefix or client: such a request
  signs a head of its own version line (`v1f`) with them as one JSON line, which no request
  without them can produce, and a request without them signs exactly as before;
- `t` bounds replay to MAX_SKEW_SECONDS either way. An exact replay (same sandbox, path, body)
  inside that window is accepted: that needs a nonce cache per runtime, which costs memory on
  the hot path, and only an on-path observer could do it (NetworkPolicies keep others off).

Rotation without downtime: a key *file* is the one key; a key *directory* (a Secret volume) holds
several, every one accepted, the file named `current` signing. Add the new key as `next` (all
verifiers learn it: they re-read the directory on an unknown key id), then make it `current` and
the old one `previous`, then drop `previous`. Comparisons are constant-time (`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

HEADER = "X-Nest-Signature"
VERSION = "v1"
MAX_SKEW_SECONDS = 60
MIN_KEY_BYTES = 16
KEY_BYTES = 32
SIGNING_NAME = "current"  # in a key directory or Secret: the key that signs
SECRET_NAME = "nest-dataplane-key"
ENV_KEY_FILE = "NEST_DATAPLANE_KEY_FILE"
CHALLENGE = 'NestSignature realm="nest-dataplane"'  # WWW-Authenticate of a 401
_KEY_ID_LABEL = b"nest-dataplane-key-id"
_HEADER_RE = re.compile(VERSION + r" t=(\d{1,12}),k=([0-9a-f]{1,64}),s=([0-9a-f]{64})")
MALFORMED = f"malformed {HEADER} header (expected '{VERSION} t=<seconds>,k=<key id>,s=<hex>')"
UNKNOWN_KEY = "signed with an unknown key"
BAD_SIGNATURE = "bad signature (wrong key, or the request differs from what was signed)"


class DataplaneKeyError(Exception):
    """No usable key: missing, unreadable, too short, or no key to sign with."""


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def key_id(key: bytes) -> str:
    """A short public name of a key (a PRF output, so it reveals nothing usable about the key)."""
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def sandbox_of(path: str) -> str:
    """The sandbox id a data-plane path addresses ('' for /metrics and the like)."""
    if path.startswith("/v1/sandboxes/"):
        return path[len("/v1/sandboxes/") :].split("/", 1)[0].split("?", 1)[0]
    return ""


# Headers a gateway sets for the function (X-Forwarded-*: which the runtime trusts only when
# signed) and, when any of them is present, the ones covered with them (the caller's Host too).
FORWARDING = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Prefix")
_COVERED = frozenset(name.lower() for name in ("Host", *FORWARDING))
_FOR, _PROTO, _HOST, _PREFIX = FORWARDING


def forwarded(headers: Mapping[str, str], items: Iterable[tuple[str, str]]) -> str:
    """The forwarding headers as signed: '' when `headers` has none of FORWARDING (the common,
    cheap case: four lookups), else every covered header of `items` as one JSON line, sorted by
    name (repeats in their order), so signer and verifier agree whatever order they travel in."""
    # Spelt out, not any() over FORWARDING: this runs on every request, and a generator costs
    # twice the four lookups.
    if not (_FOR in headers or _PROTO in headers or _HOST in headers or _PREFIX in headers):
        return ""
    pairs = [(k.lower(), v) for k, v in items if k.lower() in _COVERED]
    pairs.sort(key=lambda pair: pair[0])  # stable: repeats of one name keep their order
    return json.dumps(pairs, separators=(",", ":"))


def _head(method: str, path_qs: str, ts: str, sandbox: str, fwd: str = "") -> bytes:
    """What the MAC covers before the body; no field can hold a newline (HTTP forbids it in a
    method or request target, `ts` is digits, `fwd` is JSON), so the concatenation is
    unambiguous; with forwarding headers, the first line says so and they follow `sandbox`."""
    if fwd:
        return f"{VERSION}f\n{method}\n{path_qs}\n{ts}\n{sandbox}\n{fwd}\n".encode()
    return f"{VERSION}\n{method}\n{path_qs}\n{ts}\n{sandbox}\n".encode()


class Signed(NamedTuple):  # a tuple, not a dataclass: built on every request
    """A parsed signature header whose timestamp is within the skew window, with the prepared
    HMAC of the key it names (so `check` needs no lookup, and a re-read ring cannot race it)."""

    ts: str
    key: hmac.HMAC
    mac: str


class KeyRing:
    """The keys a party accepts (by id) and the one it signs with; immutable, cheap to share."""

    def __init__(self, keys: Mapping[str, bytes], signing: str | None = SIGNING_NAME) -> None:
        if not keys:
            raise DataplaneKeyError("no data-plane key")
        for name, key in keys.items():
            if len(key) < MIN_KEY_BYTES:
                raise DataplaneKeyError(
                    f"data-plane key {name!r} is shorter than {MIN_KEY_BYTES} bytes"
                )
        if signing not in keys:
            signing = next(iter(keys)) if len(keys) == 1 else None
        # A prepared HMAC per key: copy() skips the key schedule on every request.
        self._macs = {key_id(k): hmac.new(k, digestmod=hashlib.sha256) for k in keys.values()}
        self.signing_id = key_id(keys[signing]) if signing is not None else None
        self.names = tuple(sorted(keys))

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self._macs)

    def _mac(self, kid: str, head: bytes, body: bytes) -> str:
        mac = self._macs[kid].copy()
        mac.update(head)
        mac.update(body)  # the body itself, not a digest of it: one hash pass, no extra copy
        return mac.hexdigest()

    def sign(
        self, method: str, path_qs: str, body: bytes = b"", sandbox: str | None = None,
        now: float | None = None, fwd: str = "",
    ) -> str:  # fmt: skip
        """The header value for this request; `sandbox` defaults to the one in the path, `fwd`
        is `forwarded()` of the headers sent."""
        if self.signing_id is None:
            raise DataplaneKeyError(
                f"no {SIGNING_NAME!r} key to sign with among {list(self.names)}"
            )
        ts = str(int(time.time() if now is None else now))
        sandbox = sandbox_of(path_qs) if sandbox is None else sandbox
        mac = self._mac(self.signing_id, _head(method, path_qs, ts, sandbox, fwd), body)
        return f"{VERSION} t={ts},k={self.signing_id},s={mac}"

    def headers(self, method: str, path_qs: str, body: bytes = b"") -> dict[str, str]:
        return {HEADER: self.sign(method, path_qs, body)}

    def parse(self, header: str | None, now: float | None = None) -> Signed | str:
        """Step one, before the body is read: the header's fields, or why it is refused."""
        if not header:
            return f"missing {HEADER} header"
        match = _HEADER_RE.fullmatch(header)
        if match is None:
            return MALFORMED
        ts, kid, mac = match.groups()
        skew = abs((time.time() if now is None else now) - int(ts))
        if skew > MAX_SKEW_SECONDS:
            return f"signature timestamp is {skew:.0f}s off (more than {MAX_SKEW_SECONDS}s)"
        key = self._macs.get(kid)
        if key is None:
            return f"{UNKNOWN_KEY} ({kid})"
        return Signed(ts, key, mac)

    @staticmethod
    def check(
        signed: Signed, method: str, path_qs: str, sandbox: str, body: bytes, fwd: str = ""
    ) -> bool:
        """Step two: does the MAC cover exactly this request (and its `forwarded()` headers)?
        Constant-time comparison. Inlined (no helper calls): it runs once per invocation."""
        mac = signed.key.copy()
        if fwd:
            mac.update(_head(method, path_qs, signed.ts, sandbox, fwd))
        else:
            mac.update(f"{VERSION}\n{method}\n{path_qs}\n{signed.ts}\n{sandbox}\n".encode())
        mac.update(body)
        return hmac.compare_digest(mac.hexdigest(), signed.mac)

    def verify(
        self, header: str | None, method: str, path_qs: str, sandbox: str, body: bytes,
        now: float | None = None, fwd: str = "",
    ) -> str | None:  # fmt: skip
        """None when the request is authentic, else the reason it is refused."""
        signed = self.parse(header, now)
        if isinstance(signed, str):
            return signed
        ok = self.check(signed, method, path_qs, sandbox, body, fwd)
        return None if ok else BAD_SIGNATURE


# ---- loading -------------------------------------------------------------------------------


def _read_key(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Kubernetes with fsGroup makes Secret files group-readable: say so, do not refuse.
        log.warning("data-plane key %s is readable beyond its owner (mode %o)", path, mode & 0o777)
    return path.read_bytes()


def load(path: str | os.PathLike[str]) -> KeyRing:
    """A key file (the one key), or a directory of keys (hidden entries skipped, as a Secret
    volume's `..data` links are); raises DataplaneKeyError naming what is wrong."""
    where = Path(path)
    try:
        if where.is_dir():
            keys = {
                entry.name: _read_key(entry)
                for entry in sorted(where.iterdir())
                if not entry.name.startswith(".") and entry.is_file()
            }
            if not keys:
                raise DataplaneKeyError(f"data-plane key directory {where} holds no key")
            return KeyRing(keys)
        return KeyRing({SIGNING_NAME: _read_key(where)})
    except OSError as exc:
        raise DataplaneKeyError(
            f"cannot read the data-plane key {where}: {exc.strerror or exc}"
        ) from exc


def from_secret_data(data: Mapping[str, str | bytes] | None) -> KeyRing:
    """The key ring of a Secret's `data` (base64 values, as the API returns them)."""
    if not data:
        raise DataplaneKeyError(f"Secret {SECRET_NAME} holds no key")
    return KeyRing({name: base64.b64decode(value) for name, value in data.items()})


def write_key_file(path: str | os.PathLike[str], key: bytes | None = None) -> bytes:
    """Create a 0400 key file (tests, benchmarks, local runs); returns the key."""
    key = new_key() if key is None else key
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


class KeySource:
    """A key file or directory re-read as it changes (Secret volumes are updated in place).

    `ring` re-reads at most every `refresh_seconds`; `reload()` is what a verifier calls on an
    unknown key id (a rotation it has not seen yet), at most once per `min_reload_seconds`, so a
    flood of forged key ids costs at most one directory read per second. A read that fails keeps
    the keys already loaded: a half-updated volume must not lock everybody out.
    """

    def __init__(
        self, path: str | os.PathLike[str], refresh_seconds: float = 30.0,
        min_reload_seconds: float = 1.0,
    ) -> None:  # fmt: skip
        self.path = Path(path)
        self.refresh_seconds = refresh_seconds
        self.min_reload_seconds = min_reload_seconds
        self._ring = load(self.path)  # the first read must succeed: no key, no service
        self._read_at = time.monotonic()
        self._asked_at = float("-inf")  # last re-read asked for by an unknown key id

    @property
    def ring(self) -> KeyRing:
        if time.monotonic() - self._read_at >= self.refresh_seconds:
            self.reload(force=True)
        return self._ring

    def reload(self, force: bool = False) -> bool:
        """Re-read the keys; True when the set of key ids changed."""
        now = time.monotonic()
        if not force:
            if now - self._asked_at < self.min_reload_seconds:
                return False
            self._asked_at = now
        self._read_at = now
        try:
            ring = load(self.path)
        except DataplaneKeyError as exc:
            log.warning("keeping the data-plane keys already loaded: %s", exc)
            return False
        changed = ring.ids != self._ring.ids or ring.signing_id != self._ring.signing_id
        if changed:
            log.info("data-plane keys changed: now %s", ", ".join(ring.names))
        self._ring = ring
        return changed

    def parse(self, header: str | None) -> Signed | str:
        """KeyRing.parse, re-reading the keys once when the signer used a key not yet seen."""
        signed = self.ring.parse(header)
        if isinstance(signed, str) and signed.startswith(UNKNOWN_KEY) and self.reload():
            signed = self._ring.parse(header)
        return signed

    check = staticmethod(KeyRing.check)

    def verify(
        self, header: str | None, method: str, path_qs: str, sandbox: str, body: bytes,
        fwd: str = "",
    ) -> str | None:  # fmt: skip
        signed = self.parse(header)
        if isinstance(signed, str):
            return signed
        return None if self.check(signed, method, path_qs, sandbox, body, fwd) else BAD_SIGNATURE

"""What the gateway answers about a caller when the API server may not answer: pure decisions.

Why this module: authentication (TokenReview) and authorisation (SubjectAccessReview) are asked
of the API server, so without a policy for its absence an API-server outage stops every
invocation, although the sandboxes that serve them never needed the control plane (issue 13:
611 of 6,000 invocations failed while the API server was down). The policy, decided here as
plain functions of (how old the last answer is, what the API server said or that it said
nothing, what local verification of the token found) so that a table of unit tests pins it:

- a remembered "yes" younger than `fresh` seconds is used without asking (the old 10 s cache);
- older, the API server is asked, and its answer wins whatever is remembered: a "no" is 401/403
  and forgets the old "yes" at once (revocation works as soon as the API server can say so);
- when it cannot answer (no connection, a timeout, 429 or 5xx), a "yes" it gave less than
  `fresh + stale` seconds ago is still used (stale-if-error, bounded), and an identity may be
  proven by verifying a ServiceAccount JWT against the issuer's keys fetched earlier;
- anything else fails closed: 503 with Retry-After, never 500 and never a guess.

`ApiHealth` is the one piece of state here: after a failed call the API server is taken as
down for a back-off (1 s doubling to 10 s), so requests answered from memory meanwhile do not
each wait for a connection timeout, and one request at a time probes whether it is back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from gateway.errors import ApiUnavailable, GatewayError, Upstream
from nest_kube import ApiError
from nest_kube.api import is_transient

DEFAULT_FRESH_SECONDS = 10.0
DEFAULT_STALE_SECONDS = 300.0


class AuthUnavailable(GatewayError):
    """The API server cannot say who the caller is or what it may do, and nothing remembered or
    verifiable locally does: fail closed, and tell the caller when to try again."""

    status, kind, title = 503, "auth-unavailable", "Authentication unavailable"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = str(retry_after)


@dataclass(frozen=True)
class Windows:
    """How long a remembered "yes" is used: without asking, and when asking fails."""

    fresh: float = DEFAULT_FRESH_SECONDS
    stale: float = DEFAULT_STALE_SECONDS

    @property
    def keep(self) -> float:
        """How long an answer is worth keeping at all."""
        return self.fresh + max(0.0, self.stale)


class Review(Enum):
    """What asking the API server gave (or that it was not asked: it is known to be down)."""

    YES = "yes"
    NO = "no"
    UNREACHABLE = "unreachable"


class Local(Enum):
    """What verifying the token against the issuer's keys found (only tried in an outage)."""

    VERIFIED = "verified"  # signed by a known key of the issuer, for us, in its validity period
    UNVERIFIABLE = "unverifiable"  # not a JWT of this issuer, unknown key, or no keys: no opinion
    INVALID = "invalid"  # a known key's signature that does not match, or expired: a proven no


class Answer(Enum):
    """Where the answer comes from; the shell maps each to a user, a refusal or a 503."""

    CACHED = "cached"  # a fresh remembered yes: nobody was asked
    REVIEWED = "reviewed"  # the API server said yes just now
    REFUSED = "refused"  # the API server (or a proven-invalid token) says no: 401/403
    STALE = "stale"  # the API server is away; its yes of less than fresh+stale ago stands
    LOCAL = "local"  # the API server is away; the token's signature proves the identity
    UNAVAILABLE = "unavailable"  # the API server is away and nothing else knows: 503


def must_ask(age: float | None, windows: Windows) -> bool:
    """Whether the API server has to be asked: nothing remembered, or not fresh any more."""
    return age is None or age >= windows.fresh


def usable_stale(age: float | None, windows: Windows) -> bool:
    """Whether a remembered yes may stand in for an API server that cannot answer."""
    return age is not None and age < windows.keep


def _asked(age: float | None, windows: Windows, review: Review | None, what: str) -> Answer | None:
    """What a fresh memory or the API server's review says; None when the API server did not
    answer (then the callers decide what may stand in)."""
    if review is None:
        if must_ask(age, windows):
            raise ValueError(f"a stale or missing {what} must be reviewed")
        return Answer.CACHED
    if review is Review.YES:
        return Answer.REVIEWED
    if review is Review.NO:
        return Answer.REFUSED  # the API server is the authority whenever it answers
    return None


def identity_answer(
    age: float | None, windows: Windows, review: Review | None, local: Local | None
) -> Answer:
    """Who the caller is. `age`: of the remembered TokenReview of this very token (None: none);
    `review`: what asking gave (None: not asked, the memory is fresh); `local`: what verifying
    the token found (only consulted when the API server did not answer)."""
    asked = _asked(age, windows, review, "identity")
    if asked is not None:
        return asked
    if local is Local.INVALID:
        return Answer.REFUSED  # expired or forged: remembered or not, it is no longer good
    if usable_stale(age, windows):
        # Preferred to a local proof: it is the API server's own answer for this exact token,
        # so the user (with its extra fields) matches the remembered authorisation decisions.
        return Answer.STALE
    if local is Local.VERIFIED:
        return Answer.LOCAL
    return Answer.UNAVAILABLE


def access_answer(age: float | None, windows: Windows, review: Review | None) -> Answer:
    """Whether the caller may do it. `age`: of the remembered SubjectAccessReview "yes" for this
    identity and these attributes; `review`: as for `identity_answer`. A local proof of identity
    never grants anything: without a remembered decision an outage is a 503."""
    asked = _asked(age, windows, review, "decision")
    if asked is not None:
        return asked
    return Answer.STALE if usable_stale(age, windows) else Answer.UNAVAILABLE


def is_outage(exc: BaseException) -> bool:
    """Whether a failed review means "the API server did not answer" (then memory may stand in)
    rather than an answer: no connection, a timeout, throttling or a server fault. Errors the
    gateway's own Kube shell already translated keep the API error as their cause."""
    if isinstance(exc, ApiError):
        return is_transient(exc)
    if isinstance(exc, TimeoutError | OSError):
        return True
    if isinstance(exc, Upstream | ApiUnavailable) and isinstance(exc.__cause__, ApiError):
        return is_transient(exc.__cause__)
    return False


class ApiHealth:
    """Whether to ask the API server now: always while it answers; after a failure only once the
    back-off has passed, and then one request at a time (a probe). The clock is the caller's."""

    def __init__(self, base: float = 1.0, cap: float = 10.0) -> None:
        self.base, self.cap = base, cap
        self.failures = 0
        self.next_try = 0.0

    @property
    def down(self) -> bool:
        return self.failures > 0

    def _backoff(self) -> float:
        return min(self.cap, self.base * 2.0 ** max(0, self.failures - 1))

    def may_ask(self, now: float) -> bool:
        """True to ask. While down, the first caller past the back-off becomes the probe: the
        next try moves on by one back-off so concurrent requests answer from memory instead."""
        if not self.down:
            return True
        if now < self.next_try:
            return False
        self.next_try = now + self._backoff()
        return True

    def answered(self) -> None:
        self.failures = 0
        self.next_try = 0.0

    def failed(self, now: float) -> None:
        self.failures += 1
        self.next_try = now + self._backoff()

    def retry_after(self, now: float) -> int:
        """Whole seconds until the API server is asked again (at least 1), for Retry-After."""
        return max(1, math.ceil(self.next_try - now)) if self.down else 1


@dataclass(frozen=True)
class OutagePolicy:
    """How the gateway authenticates while the API server cannot answer (flags of main.py)."""

    stale_seconds: float = DEFAULT_STALE_SECONDS  # beyond the fresh window; 0: no stale answers
    local_jwt: bool = True  # verify ServiceAccount JWTs against the published issuer keys
    audiences: tuple[str, ...] = ()  # accepted `aud` of local tokens; empty: the issuer


DEFAULT_OUTAGE = OutagePolicy()

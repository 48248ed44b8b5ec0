"""The restart policy of the local control plane's supervisor, as plain functions.

A kubelet restarts its static pods (etcd, kube-apiserver, ...) when they die, with a back-off
doubling from 10 s to 5 min that resets after 10 min of good running; a crashed API server on a
laptop should be back in seconds, so the local cluster uses 1 s doubling to 30 s, reset after a
run of 60 s. The supervisor process (nest_cluster.supervisor) observes, decides with `step`, and
starts; everything it decides is here, tested without processes.

What a component *should* do is read from its pid file: `nest cluster down` and every deliberate
stop remove it, a crash leaves it behind. So "pid file present, process gone" is the one signal
for a restart, and a cluster stopped by any version of `down` is never brought back.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    cap: float = 30.0
    reset_after: float = 60.0  # a run this long was a good one: the next crash starts over

    def delay(self, crashes: int) -> float:
        """The wait before the restart that follows `crashes` consecutive short runs."""
        return float(min(self.cap, self.initial * 2 ** max(0, crashes - 1)))


@dataclass(frozen=True)
class Seen:
    """One component as the supervisor found it on one tick."""

    wanted: bool  # its pid file exists
    pid: int | None = None  # its live process, if any
    started: float | None = None  # that process's start (epoch seconds)


@dataclass(frozen=True)
class Track:
    """What the supervisor remembers of one component (persisted for `nest cluster status`)."""

    restarts: int = 0  # starts made by the supervisor
    crashes: int = 0  # consecutive deaths after short runs: the back-off's exponent
    pid: int | None = None
    started: float | None = None
    died: float | None = None  # when it was found dead; None while it runs or is stopped
    restart_at: float | None = None
    last_exit: str | None = None


def exit_reason(code: int | None) -> str:
    """`os.waitstatus_to_exitcode`'s value in words; None: not our child, so unknowable."""
    if code is None:
        return "died"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited {code}"


def crashed(track: Track, now: float, ran: float | None, reason: str, policy: Backoff) -> Track:
    """Schedule the restart of a component that died (or could not be started)."""
    good_run = ran is not None and ran >= policy.reset_after
    crashes = 1 if good_run else track.crashes + 1
    return replace(
        track, crashes=crashes, pid=None, died=now, restart_at=now + policy.delay(crashes),
        last_exit=reason,
    )  # fmt: skip


def observe(
    track: Track, seen: Seen, now: float, exits: Mapping[int, int], policy: Backoff
) -> Track:
    """The new track after one look at the component. `exits` are the exit codes of the
    supervisor's children reaped since the last look, by pid."""
    if seen.pid is not None:
        if seen.pid == track.pid and track.died is None:
            return track
        return replace(track, pid=seen.pid, started=seen.started, died=None, restart_at=None)
    if not seen.wanted:  # stopped on purpose: nothing to restart
        return replace(track, pid=None, died=None, restart_at=None)
    if track.died is not None:  # already dead, restart scheduled
        return track
    ran = now - track.started if track.started is not None else None
    code = exits.get(track.pid) if track.pid is not None else None
    return crashed(track, now, ran, exit_reason(code), policy)


def due(track: Track, now: float) -> bool:
    return track.died is not None and track.restart_at is not None and now >= track.restart_at


def restarted(track: Track, pid: int, now: float) -> Track:
    return replace(track, restarts=track.restarts + 1, pid=pid, started=now, died=None,
                   restart_at=None)  # fmt: skip


def step(
    tracks: Mapping[str, Track],
    seen: Mapping[str, Seen],
    order: Sequence[str],
    now: float,
    exits: Mapping[int, int],
    policy: Backoff,
) -> tuple[dict[str, Track], list[str]]:
    """Observe every component; return the new tracks and the components to start now, in
    `order` (the start order: etcd before the API server before its clients)."""
    new = {
        name: observe(tracks.get(name, Track()), seen.get(name, Seen(False)), now, exits, policy)
        for name in order
    }
    return new, [name for name in order if due(new[name], now)]


def cluster_stopped(seen: Mapping[str, Seen]) -> bool:
    """No component is meant to run any more: the supervisor's work is over."""
    return not any(s.wanted for s in seen.values())


def describe(track: Track | None, now: float) -> str:
    """The supervisor's word on a component, for `nest cluster status`."""
    if track is None or track.died is None or track.restart_at is None:
        return ""
    wait = max(0.0, track.restart_at - now)
    return f"{track.last_exit}; restart in {wait:.0f}s (back-off, crash {track.crashes})"


def dumps(tracks: Mapping[str, Track]) -> str:
    return json.dumps({name: asdict(t) for name, t in tracks.items()}, indent=2, sort_keys=True)


def loads(text: str) -> dict[str, Track]:
    """Tracks from `dumps`' text; anything unreadable counts as no history."""
    try:
        raw: Any = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    names = {f.name for f in fields(Track)}
    out = {}
    for name, value in raw.items():
        if isinstance(value, dict):
            try:
                out[name] = Track(**{k: v for k, v in value.items() if k in names})
            except TypeError:
                continue
    return out

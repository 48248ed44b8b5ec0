"""The supervisor's restart policy: back-off 1 s doubling to 30 s, reset by a 60 s run; a
component stopped on purpose (no pid file) is never restarted; the record survives a reload."""

from nest_cluster.supervision import (
    Backoff,
    Seen,
    Track,
    cluster_stopped,
    describe,
    dumps,
    exit_reason,
    loads,
    observe,
    restarted,
    step,
)

POLICY = Backoff(initial=1.0, cap=30.0, reset_after=60.0)
ORDER = ("etcd", "kube-apiserver")


def test_delays_double_from_one_second_to_the_cap() -> None:
    assert [POLICY.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def _crash_loop(track: Track, now: float, runs: list[float]) -> tuple[Track, list[float]]:
    """Die after each run of the given length; return the track and each restart's wait."""
    waits: list[float] = []
    for ran in runs:
        track = restarted(track, pid=100 + len(waits), now=now) if track.died else track
        now += ran
        track = observe(track, Seen(wanted=True), now, {}, POLICY)
        assert track.restart_at is not None
        waits.append(track.restart_at - now)
        now = track.restart_at
    return track, waits


def test_short_runs_back_off_and_a_long_run_resets() -> None:
    start = Track(pid=7, started=0.0)
    track, waits = _crash_loop(start, 0.0, [1.0, 1.0, 1.0, 1.0])
    assert waits == [1, 2, 4, 8]
    assert track.crashes == 4
    track, waits = _crash_loop(track, 100.0, [60.0, 1.0])
    assert waits == [1, 2]  # the 60 s run started the back-off over


def test_a_death_is_scheduled_once_and_due_after_the_delay() -> None:
    tracks = {"etcd": Track(pid=7, started=0.0), "kube-apiserver": Track(pid=8, started=0.0)}
    seen = {"etcd": Seen(True, 7, 0.0), "kube-apiserver": Seen(True)}
    tracks, due = step(tracks, seen, ORDER, 10.0, {8: -9}, POLICY)
    assert due == []
    assert tracks["kube-apiserver"].died == 10.0
    assert tracks["kube-apiserver"].last_exit == "killed by SIGKILL"
    tracks, due = step(tracks, seen, ORDER, 10.5, {}, POLICY)
    assert due == [] and tracks["kube-apiserver"].died == 10.0  # not rescheduled
    tracks, due = step(tracks, seen, ORDER, 11.0, {}, POLICY)
    assert due == ["kube-apiserver"]
    assert tracks["etcd"] == Track(pid=7, started=0.0)


def test_due_components_come_in_start_order() -> None:
    tracks = {name: Track(pid=1, started=0.0) for name in ORDER}
    seen = {name: Seen(True) for name in ORDER}
    tracks, _ = step(tracks, seen, ORDER, 100.0, {}, POLICY)
    _, due = step(tracks, seen, ORDER, 101.0, {}, POLICY)
    assert due == ["etcd", "kube-apiserver"]


def test_a_component_stopped_on_purpose_is_not_restarted() -> None:
    dead = observe(Track(pid=7, started=0.0), Seen(wanted=True), 5.0, {}, POLICY)
    assert dead.died == 5.0
    stopped = observe(dead, Seen(wanted=False), 5.5, {}, POLICY)
    assert stopped.died is None and stopped.restart_at is None
    _, due = step({"etcd": stopped}, {"etcd": Seen(False)}, ("etcd",), 99.0, {}, POLICY)
    assert due == []


def test_a_process_started_by_someone_else_is_adopted() -> None:
    """`nest cluster up` may start the component before the back-off ends."""
    dead = observe(Track(pid=7, started=0.0), Seen(wanted=True), 5.0, {}, POLICY)
    alive = observe(dead, Seen(True, 9, 5.2), 5.3, {}, POLICY)
    assert (alive.pid, alive.started, alive.died, alive.restart_at) == (9, 5.2, None, None)
    assert alive.restarts == 0  # not the supervisor's restart


def test_restart_counts_and_status_words() -> None:
    dead = observe(Track(pid=7, started=0.0), Seen(wanted=True), 5.0, {}, POLICY)
    assert describe(dead, 5.0) == "died; restart in 1s (back-off, crash 1)"
    again = restarted(dead, pid=8, now=6.0)
    assert again.restarts == 1 and again.pid == 8 and describe(again, 6.0) == ""
    assert describe(None, 0.0) == ""


def test_exit_reasons() -> None:
    assert exit_reason(None) == "died"
    assert exit_reason(2) == "exited 2"
    assert exit_reason(-15) == "killed by SIGTERM"


def test_the_cluster_is_stopped_when_no_pid_file_is_left() -> None:
    assert cluster_stopped({"etcd": Seen(False), "node": Seen(False)})
    assert not cluster_stopped({"etcd": Seen(False), "node": Seen(True)})


def test_tracks_round_trip_and_garbage_is_no_history() -> None:
    tracks = {"etcd": Track(restarts=3, crashes=2, pid=5, started=1.5, last_exit="died")}
    assert loads(dumps(tracks)) == tracks
    assert loads("not json") == {}
    assert loads("[1]") == {}
    assert loads('{"etcd": {"restarts": 1, "unknown": 2}, "x": 3}') == {"etcd": Track(restarts=1)}

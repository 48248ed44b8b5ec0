"""EventCorrelator decisions: counts for repeats, aggregation of similar events, the spam filter."""

from __future__ import annotations

from nest_kube.correlator import (
    COMBINED,
    Correlator,
    EventSource,
    ObjectRef,
    TokenBucket,
    count_patch,
    event_body,
    timestamp,
)

SOURCE = EventSource("nest-sidecar", host="pod-1", reporting_controller="nest.sandbox.dev/sidecar")
SANDBOX = {
    "apiVersion": "nest.sandbox.dev/v1alpha1",
    "kind": "Sandbox",
    "metadata": {"name": "s", "namespace": "a", "uid": "u1", "resourceVersion": "7"},
}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_an_identical_event_is_counted_on_the_first_one() -> None:
    clock = Clock()
    correlator = Correlator(SOURCE, clock)
    ref = ObjectRef.of(SANDBOX)
    first = correlator.correlate(ref, "Normal", "Started", "running")
    clock.now += 5
    # A later resourceVersion of the same object is the same object.
    again = correlator.correlate(
        ObjectRef.of({**SANDBOX, "metadata": {**SANDBOX["metadata"], "resourceVersion": "9"}}),
        "Normal",
        "Started",
        "running",
    )
    assert first is not None and again is not None
    assert (first.count, again.count) == (1, 2)
    assert again.name == first.name and again.first == first.first and again.last == clock.now
    other = correlator.correlate(ref, "Normal", "Stopped", "running")
    assert other is not None and other.name != first.name and other.count == 1


def test_similar_events_fold_into_one_from_the_tenth_message_on() -> None:
    correlator = Correlator(SOURCE, Clock())
    ref = ObjectRef.of(SANDBOX)
    records = [correlator.correlate(ref, "Warning", "Failed", f"attempt {i}") for i in range(12)]
    names = [r.name for r in records if r is not None]
    assert len(set(names[:9])) == 9  # distinct messages are distinct Events up to the threshold
    combined = [r for r in records[9:] if r is not None]
    assert [r.message for r in combined] == [COMBINED + f"attempt {i}" for i in (9, 10, 11)]
    assert len({r.name for r in combined}) == 1 and [r.count for r in combined] == [1, 2, 3]


def test_the_aggregation_window_starts_again_after_ten_quiet_minutes() -> None:
    clock = Clock()
    correlator = Correlator(SOURCE, clock, max_similar=3)
    ref = ObjectRef.of(SANDBOX)
    for i in range(2):
        correlator.correlate(ref, "Warning", "Failed", f"m{i}")
    clock.now += 601
    record = correlator.correlate(ref, "Warning", "Failed", "m2")
    assert record is not None and not record.message.startswith(COMBINED)


def test_the_spam_filter_holds_back_past_the_burst_but_keeps_counting() -> None:
    clock = Clock()
    correlator = Correlator(SOURCE, clock, burst=3, qps=1 / 300)
    ref = ObjectRef.of(SANDBOX)
    written = [correlator.correlate(ref, "Normal", "Probe", "same") for _ in range(5)]
    assert [r.count if r else None for r in written] == [1, 2, 3, None, None]
    clock.now += 300  # one token back
    later = correlator.correlate(ref, "Normal", "Probe", "same")
    assert later is not None and later.count == 6  # the held-back occurrences are in the count
    other = ObjectRef.of({"kind": "Sandbox", "metadata": {"name": "t", "namespace": "a"}})
    assert correlator.correlate(other, "Normal", "Probe", "same") is not None  # per object


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=1.0, burst=2, now=0.0)
    assert [bucket.allow(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.allow(1.0) and not bucket.allow(1.0)
    assert [bucket.allow(100.0) for _ in range(3)] == [True, True, False]


def test_names_are_unique_even_when_the_clock_stands_still() -> None:
    correlator = Correlator(SOURCE, Clock(), burst=100)
    ref = ObjectRef.of(SANDBOX)
    records = [correlator.correlate(ref, "Normal", f"R{i}", "m") for i in range(50)]
    names = {r.name for r in records if r is not None}
    assert len(names) == 50 and all(n.startswith("s.") for n in names)


def test_event_body_and_count_patch_are_core_v1_events() -> None:
    clock = Clock()
    correlator = Correlator(SOURCE, clock)
    record = correlator.correlate(ObjectRef.of(SANDBOX), "Warning", "Crashed", "x" * 5000)
    assert record is not None
    body = event_body(record, SOURCE)
    assert body["metadata"] == {"name": record.name, "namespace": "a"}
    assert body["involvedObject"] == {
        "apiVersion": "nest.sandbox.dev/v1alpha1",
        "kind": "Sandbox",
        "name": "s",
        "namespace": "a",
        "uid": "u1",
        "resourceVersion": "7",
    }
    assert len(body["message"]) == 1024 and body["count"] == 1
    assert body["source"] == {"component": "nest-sidecar", "host": "pod-1"}
    assert body["reportingComponent"] == "nest.sandbox.dev/sidecar"
    assert body["firstTimestamp"] == timestamp(clock.now) == "1970-01-12T13:46:40Z"
    assert count_patch(record) == {
        "count": 1,
        "lastTimestamp": body["lastTimestamp"],
        "message": body["message"],
    }


def test_a_cluster_scoped_object_reports_in_the_default_namespace() -> None:
    pool = {
        "apiVersion": "nest.sandbox.dev/v1alpha1",
        "kind": "SandboxPool",
        "metadata": {"name": "p", "uid": "u"},
    }
    record = Correlator(SOURCE, Clock()).correlate(ObjectRef.of(pool), "Normal", "R", "m")
    assert record is not None and record.namespace == "default"
    assert "namespace" not in event_body(record, SOURCE)["involvedObject"]

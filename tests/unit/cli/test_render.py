"""What `nest get`/`describe` print: kubectl-like tables for people, JSON/YAML for scripts."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import yaml

from nest import render
from tests.unit.cli.objects import deployment, pod, replicaset, sandbox

NOW = datetime(2026, 1, 1, 2, 30, tzinfo=UTC)


def test_ages_read_like_kubectl() -> None:
    now = datetime(2026, 1, 3, tzinfo=UTC)
    assert render.age("2026-01-02T23:59:18Z", now) == "42s"
    assert render.age("2026-01-02T23:53:00Z", now) == "7m"
    assert render.age("2026-01-02T21:00:00Z", now) == "3h"
    assert render.age("2025-12-29T00:00:00Z", now) == "5d"
    assert render.age(None, now) == "<unknown>"
    assert render.age("2026-01-04T00:00:00Z", now) == "0s"  # clock skew is not negative


def test_tables_align_columns_three_spaces_apart() -> None:
    text = render.table(["NAME", "READY"], [["a", "1/1"], ["longer-name", "0/2"]])
    assert text == "NAME          READY\na             1/1\nlonger-name   0/2\n"


def test_functions_table_shows_ready_of_desired_and_settings() -> None:
    dep = deployment(
        replicas=3,
        isolation="namespace",
        min_replicas=1,
        max_replicas=4,
        status={"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
    )
    lines = render.functions_table([dep], NOW).splitlines()
    assert lines[0].split() == [
        "NAME",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "ISOLATION",
        "HANDLER",
        "AUTOSCALE",
        "AGE",
    ]
    assert lines[1].split() == ["hello", "2/3", "3", "2", "namespace", "main:handler", "1-4", "2h"]


def test_sandboxes_table_shows_phase_reason_pod_and_address() -> None:
    rows = [
        sandbox("hello-a", "h"),
        sandbox("hello-b", "h", "Failed", reason="ImportError"),
        sandbox("hello-c", "h", "Pending", pod=None),
    ]
    rows[0]["metadata"]["deletionTimestamp"] = "2026-01-01T02:00:00Z"
    lines = render.sandboxes_table(rows, NOW).splitlines()
    assert lines[1].split() == [
        "hello-a",
        "hello",
        "Terminating",
        "-",
        "0",
        "nest-system/pool-a",
        "10.0.0.1:8080",
        "2h",
    ]
    assert lines[2].split()[2:4] == ["Failed", "ImportError"]
    assert lines[3].split()[5:7] == ["<none>", "<none>"]


def test_pods_table_counts_the_sandboxes_each_pool_pod_hosts() -> None:
    sandboxes = [
        sandbox("a", "h", pod="pool-a"),
        sandbox("b", "h", pod="pool-a"),
        sandbox("c", "h", pod=None),
    ]
    lines = render.pods_table([pod("pool-a"), pod("pool-b", ready=False)], sandboxes, NOW)
    rows = [line.split() for line in lines.splitlines()]
    assert rows[1] == ["nest-system", "pool-a", "2/2", "Running", "10.0.0.1", "default", "2", "2h"]
    assert rows[2][2] == "1/2" and rows[2][6] == "0"


def test_describe_shows_settings_revisions_endpoints_sandboxes_and_events() -> None:
    dep = deployment(
        replicas=1,
        status={
            "replicas": 1,
            "availableReplicas": 1,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}
            ],
        },
    )
    sets = [replicaset(dep, 2, "bbb"), replicaset(dep, 1, "aaa", replicas=0)]
    endpoints = {
        "status": {
            "ready": [
                {
                    "sandbox": "hello-bbb-1",
                    "podName": "pool-a",
                    "podIP": "10.0.0.1",
                    "port": 8080,
                    "revision": 2,
                }
            ]
        }
    }
    events = [
        {
            "type": "Warning",
            "reason": "FailedScheduling",
            "lastTimestamp": "2026-01-01T02:29:00Z",
            "involvedObject": {"kind": "Sandbox", "name": "hello-bbb-1"},
            "message": "no pod",
        }
    ]
    text = render.describe_function(
        dep, sets, endpoints, [sandbox("hello-bbb-1", "bbb")], events, NOW
    )
    assert "Handler:        main:handler" in text
    assert "Code:           inline: main.py" in text
    assert "Revision:       2" in text
    assert "Available   True     MinimumReplicasAvailable" in text
    revisions = text.split("Revisions:\n")[1].split("Endpoints:")[0].splitlines()
    assert [line.split()[0] for line in revisions[1:]] == ["1", "2"]
    assert "ready   hello-bbb-1   pool-a   10.0.0.1:8080   2" in text
    assert "Warning   FailedScheduling   1m    Sandbox/hello-bbb-1   no pod" in text


def test_describe_without_anything_says_none() -> None:
    text = render.describe_function(deployment(), [], None, [], [], NOW)
    for section in ("Revisions", "Endpoints", "Sandboxes", "Events"):
        assert f"{section}:\n  <none>\n" in text
    assert "Autoscaling:    off" in text


def test_several_objects_dump_as_a_list_and_one_as_itself() -> None:
    items = [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]
    as_json = json.loads(render.dump(items, "json"))
    assert as_json["kind"] == "List" and as_json["items"] == items
    assert yaml.safe_load(render.dump(items, "yaml")) == as_json
    assert json.loads(render.dump(items[0], "json")) == items[0]


def test_all_namespaces_listings_lead_with_the_namespace() -> None:
    objects = [{"metadata": {"namespace": "team-a"}}, {"metadata": {"namespace": "b"}}]
    text = render.with_namespace(render.table(["NAME"], [["x"], ["y"]]), objects)
    assert text == "NAMESPACE   NAME\nteam-a      x\nb           y\n"

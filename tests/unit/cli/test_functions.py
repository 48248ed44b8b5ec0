"""`nest deploy` and `nest rollout` decisions: code on disk → a function, and when it is ready."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crds.constants import TEMPLATE_HASH_LABEL
from nest import functions
from nest.errors import InvalidFunctionError, NestError, NotFoundError
from tests.unit.cli.objects import FILES, deployment, replicaset, sandbox


def test_a_file_is_named_and_handled_by_its_stem(tmp_path: Path) -> None:
    path = tmp_path / "Hello_World.py"
    path.write_text("def handler(e, c):\n    return 1\n")
    code = functions.read_code(path)
    assert code.files == {"Hello_World.py": path.read_text()}
    assert code.default_name == "hello-world"
    assert code.default_handler == "Hello_World:handler"


def test_a_file_that_is_no_module_name_needs_an_explicit_handler(tmp_path: Path) -> None:
    path = tmp_path / "hello-world.py"
    path.write_text("def handler(e, c):\n    return 1\n")
    code = functions.read_code(path)
    assert code.default_handler is None
    with pytest.raises(InvalidFunctionError, match="pass --handler"):
        functions.function_request(code, functions.DeployOptions())
    explicit = functions.DeployOptions(handler="main:handler")
    assert functions.function_request(code, explicit).name == "hello-world"


def test_a_directory_sends_its_files_but_not_caches_or_vcs(tmp_path: Path) -> None:
    fn = tmp_path / "my_fn"
    (fn / "pkg" / "__pycache__").mkdir(parents=True)
    (fn / ".git").mkdir()
    (fn / "main.py").write_text("import pkg.util\n")
    (fn / "pkg" / "util.py").write_text("X = 1\n")
    (fn / "pkg" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\x00")
    (fn / ".git" / "HEAD").write_text("ref\n")
    (fn / "data.json").write_text("{}")
    code = functions.read_code(fn)
    assert sorted(code.files) == ["data.json", "main.py", "pkg/util.py"]
    assert (code.default_name, code.default_handler) == ("my-fn", "main:handler")


def test_too_much_code_suggests_a_configmap_or_url(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("x = 1\n" * 100)
    with pytest.raises(InvalidFunctionError, match=r"ConfigMap.*url"):
        functions.read_code(tmp_path, limit=100)


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("missing.py", None, "no such file"),
        ("notes.txt", "hi", "must be a .py file"),
        ("bin.py", b"\xff\xfe\x00", "UTF-8"),
    ],
)
def test_unusable_paths_are_refused_clearly(
    tmp_path: Path, name: str, content: str | bytes | None, error: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(InvalidFunctionError, match=error):
        functions.read_code(path)


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidFunctionError, match="no files"):
        functions.read_code(tmp_path)


def test_options_become_the_same_deployment_the_gateway_would_create() -> None:
    code = functions.Code(FILES, "hello", "main:handler")
    opts = functions.DeployOptions(
        name="api", isolation="namespace", replicas=3, memory="32Mi", env={"A": "1"}
    )
    obj = functions.manifest("team", functions.function_request(code, opts))
    assert obj["metadata"]["name"] == "api" and obj["metadata"]["namespace"] == "team"
    assert obj["spec"]["replicas"] == 3
    assert obj["spec"]["selector"]["matchLabels"] == {functions.FUNCTION_LABEL: "api"}
    fn = obj["spec"]["template"]["spec"]["function"]
    assert fn["handler"] == "main:handler" and fn["isolation"] == "namespace"
    assert fn["resources"]["memory"] == "32Mi" and fn["env"] == {"A": "1"}
    assert fn["source"] == {"inline": FILES}


def test_min_and_max_turn_on_autoscaling_starting_at_min() -> None:
    code = functions.Code(FILES, "hello", "main:handler")
    req = functions.function_request(code, functions.DeployOptions(min_replicas=1, max_replicas=5))
    obj = functions.manifest("ns", req)
    assert obj["spec"]["autoscaling"]["minReplicas"] == 1
    assert obj["spec"]["autoscaling"]["maxReplicas"] == 5
    assert obj["spec"]["replicas"] == 1
    only_max = functions.function_request(code, functions.DeployOptions(max_replicas=2))
    assert functions.manifest("ns", only_max)["spec"]["replicas"] == 0  # scales from zero


def test_min_without_max_is_refused() -> None:
    code = functions.Code(FILES, "hello", "main:handler")
    with pytest.raises(InvalidFunctionError, match="--min needs --max"):
        functions.function_request(code, functions.DeployOptions(min_replicas=1))


@pytest.mark.parametrize(
    ("opts", "field"),
    [
        (functions.DeployOptions(handler="no-colon"), "handler"),
        (functions.DeployOptions(name="Bad_Name"), "name"),
        (functions.DeployOptions(replicas=-1), "replicas"),
        (functions.DeployOptions(memory="lots"), "memory"),
        (functions.DeployOptions(min_replicas=5, max_replicas=2), "minReplicas"),
    ],
)
def test_invalid_options_name_the_field(opts: functions.DeployOptions, field: str) -> None:
    code = functions.Code(FILES, "hello", "main:handler")
    with pytest.raises(InvalidFunctionError, match=field):
        functions.manifest("ns", functions.function_request(code, opts))


def test_an_update_keeps_replicas_unless_given_and_keeps_the_resource_version() -> None:
    stored = deployment(replicas=4)
    code = functions.Code(
        {"main.py": "def handler(e, c):\n    return 2\n"}, "hello", "main:handler"
    )
    same = functions.updated(stored, functions.function_request(code, functions.DeployOptions()))
    assert same["spec"]["replicas"] == 4
    assert same["metadata"]["resourceVersion"] == "7"
    assert same["spec"]["template"]["spec"]["function"]["source"]["inline"] == code.files
    more = functions.updated(
        stored, functions.function_request(code, functions.DeployOptions(replicas=6))
    )
    assert more["spec"]["replicas"] == 6


def observed(replicas: int, ready: int, generation: int = 1) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": ready,
        "availableReplicas": ready,
    }


def test_ready_when_every_desired_sandbox_of_the_current_template_is_available() -> None:
    dep = deployment(replicas=2, status=observed(2, 2))
    verdict = functions.readiness(dep, [replicaset(dep, 1, "aaa")], [])
    assert verdict.ready and verdict.failure is None
    assert verdict.progress == "hello: 2/2 ready"


def test_waiting_reports_how_many_are_ready_and_what_the_rest_do() -> None:
    dep = deployment(replicas=3, status=observed(3, 1))
    sandboxes = [
        sandbox("a", "aaa"),
        sandbox("b", "aaa", "Starting"),
        sandbox("c", "aaa", "Pending", reason="Unschedulable", pod=None),
    ]
    verdict = functions.readiness(dep, [replicaset(dep, 1, "aaa")], sandboxes)
    assert not verdict.ready and verdict.failure is None
    assert verdict.progress == "waiting: 1/3 ready (1 Running, 1 Starting, 1 Unschedulable)"


def test_a_permanent_failure_of_the_current_revision_ends_the_wait_with_its_reason() -> None:
    dep = deployment(replicas=1, status=observed(1, 0))
    failed = sandbox(
        "hello-x",
        "aaa",
        "Failed",
        reason="ImportError",
        message="No module named 'nope'",
        pod="pool-a",
    )
    verdict = functions.readiness(dep, [replicaset(dep, 1, "aaa")], [failed])
    assert not verdict.ready
    assert verdict.failure == "sandbox hello-x of hello failed: ImportError: No module named 'nope'"


def test_transient_failures_and_old_revisions_do_not_end_the_wait() -> None:
    dep = deployment(replicas=1, status=observed(2, 0))
    dep["status"]["updatedReplicas"] = 1
    sets = [replicaset(dep, 1, "old"), replicaset(dep, 2, "new")]
    sandboxes = [
        sandbox("old-1", "old", "Failed", reason="ImportError"),
        sandbox("new-1", "new", "Failed", reason="OOMKilled"),
    ]
    verdict = functions.readiness(dep, sets, sandboxes)
    assert verdict.failure is None and not verdict.ready
    assert "1 OOMKilled" in verdict.progress


def test_a_failure_is_not_judged_before_the_operator_observed_the_new_generation() -> None:
    dep = deployment(replicas=1, generation=2, status=observed(1, 0, generation=1))
    failed = sandbox("hello-x", "aaa", "Failed", reason="SyntaxError")
    verdict = functions.readiness(dep, [replicaset(dep, 1, "aaa")], [failed])
    assert verdict.failure is None and not verdict.ready


def test_an_exceeded_progress_deadline_is_a_failure() -> None:
    status = observed(1, 0)
    status["conditions"] = [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    ]
    verdict = functions.readiness(deployment(replicas=1, status=status), [], [])
    assert verdict.failure is not None and "progress deadline" in verdict.failure


def test_the_current_revision_is_the_newest_replica_set_unless_annotated() -> None:
    dep = deployment()
    sets = [replicaset(dep, 3, "c"), replicaset(dep, 1, "a")]
    assert functions.current_revision(dep, sets) == 3
    assert functions.current_hash(dep, sets) == "c"
    assert functions.current_revision(dep, []) is None


def test_undo_writes_back_the_previous_template_without_its_hash() -> None:
    dep = deployment()
    sets = [replicaset(dep, 1, "a", handler="main:old"), replicaset(dep, 2, "b")]
    template, revision = functions.undo_template(dep, sets, None)
    assert revision == 1
    assert template["spec"]["function"]["handler"] == "main:old"
    assert TEMPLATE_HASH_LABEL not in template["metadata"]["labels"]
    with pytest.raises(NotFoundError, match="revision 7 not found"):
        functions.undo_template(dep, sets, 7)
    with pytest.raises(InvalidFunctionError, match="no previous revision"):
        functions.undo_template(dep, sets[:1], None)


def test_env_pairs() -> None:
    assert functions.parse_env(["A=1", "B=x=y", "A=2"]) == {"A": "2", "B": "x=y"}
    with pytest.raises(NestError, match="NAME=VALUE"):
        functions.parse_env(["novalue"])


def test_the_interface_flag_reaches_the_function() -> None:
    from nest.cli import build_parser

    args = build_parser().parse_args(
        ["deploy", "app/", "--interface", "asgi", "--handler", "m:app"]
    )
    assert args.interface == "asgi"
    code = functions.Code(FILES, "hello", "main:handler")
    opts = functions.DeployOptions(handler="m:app", interface=args.interface)
    fn = functions.manifest("team", functions.function_request(code, opts))["spec"]["template"]
    assert fn["spec"]["function"]["interface"] == "asgi"
    plain = functions.manifest("team", functions.function_request(code, functions.DeployOptions()))
    assert plain["spec"]["template"]["spec"]["function"]["interface"] == "nest"

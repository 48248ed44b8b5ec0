"""`nest cluster ...` and `nest demo` run the local cluster's own command (nest-cluster) with every
word after the command, and say how to install it where it is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from nest import cli, cluster_cmd
from nest.errors import NestError


def _parsed(*argv: str) -> tuple[tuple[str, ...], list[str]]:
    args = cli.parse(cli.build_parser(), list(argv))
    return args.prefix, args.passed


def test_every_word_after_the_command_is_the_local_clusters_even_help() -> None:
    assert _parsed("cluster", "--help") == ((), ["--help"])
    assert _parsed("cluster", "up", "--timeout", "5") == ((), ["up", "--timeout", "5"])
    assert _parsed("-v", "demo", "--timeout", "60") == (("demo",), ["--timeout", "60"])
    assert _parsed("cluster") == ((), [])


def test_other_commands_still_reject_unknown_words() -> None:
    with pytest.raises(SystemExit):
        cli.parse(cli.build_parser(), ["crds", "check", "--bogus"])


def test_the_door_runs_nest_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEST_STATE_DIR", str(tmp_path))
    assert cli.main(["cluster", "env", "--path"]) == 0
    assert capfd.readouterr().out.strip() == str(tmp_path / "kubeconfig")
    assert cli.main(["cluster", "no-such-command"]) == 2


def test_a_local_pod_log_that_does_not_exist_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEST_STATE_DIR", str(tmp_path))
    with pytest.raises(NestError, match=r"^pod ns/p is not running on the local node$"):
        cluster_cmd.local_pod_log("ns", "p", "runtime")


def test_without_the_local_cluster_installed_it_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cluster_cmd, "DEV_PACKAGE", "nest_cluster_not_installed")
    assert cli.main(["demo"]) == 1
    assert "pip install -e ./cluster" in capsys.readouterr().err

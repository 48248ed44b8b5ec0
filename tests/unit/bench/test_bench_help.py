"""`python -m bench NAME --help` tells what that benchmark measures, without running it."""

from __future__ import annotations

import pytest

from bench import __main__ as cli


@pytest.mark.parametrize("name", ["invoke", "scale"])
def test_a_benchs_help_is_its_docstring_and_nothing_runs(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cli.main([name, "--help"])
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m bench {name} [--json]")
    assert out.split("\n\n", 1)[1].startswith(f"{name}:")  # the module docstring's first line

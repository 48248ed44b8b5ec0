"""Reading a function's declared dependencies as pip would, before pip runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from nest.package import PackageBuildError
from nest.package.requirements import (
    find_requirements,
    logical_lines,
    missing_distribution,
    parse_pyproject,
    parse_requirements_file,
    project_name,
)


def test_logical_lines_join_continuations_and_drop_comments() -> None:
    text = "# header\nrequests==2.31 \\\n  ; python_version>'3'\n\nflask # the web\nurl#frag\n"
    assert logical_lines(text) == ["requests==2.31   ; python_version>'3'", "flask", "url#frag"]


def test_includes_are_read_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "reqs").mkdir()
    (tmp_path / "reqs" / "base.txt").write_text("six==1.16.0\n")
    (tmp_path / "reqs" / "pins.txt").write_text("idna<4\n")
    (tmp_path / "requirements.txt").write_text(
        "-r reqs/base.txt\n--constraint=reqs/pins.txt\n--index-url https://example.org/simple\n"
        "fastapi>=0.110 --hash=sha256:abc\n"
    )
    found = parse_requirements_file(tmp_path / "requirements.txt")
    # Constraints limit versions but install nothing: they are not requirements.
    assert found.specifiers == ("six==1.16.0", "fastapi>=0.110")
    assert found.names == ("six", "fastapi")
    # ...but they decide what pip installs, so the cache key covers their text.
    assert "idna<4" in found.text and "six==1.16.0" in found.text


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("-e ./lib", "editable"),
        ("--editable=git+https://example.org/x.git", "editable"),
        ("--no-binary :all:", "no-binary"),
        ("--user", "not supported"),
        ("-r", "names no file"),
    ],
)
def test_what_cannot_become_a_portable_layer_is_refused(
    tmp_path: Path, line: str, message: str
) -> None:
    (tmp_path / "requirements.txt").write_text(f"six\n{line}\n")
    with pytest.raises(PackageBuildError, match=message):
        parse_requirements_file(tmp_path / "requirements.txt")


def test_an_include_loop_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("-r b.txt\n")
    (tmp_path / "b.txt").write_text("-r a.txt\n")
    with pytest.raises(PackageBuildError, match="includes itself"):
        parse_requirements_file(tmp_path / "a.txt")


def test_pyproject_dependencies_become_a_requirements_file() -> None:
    found = parse_pyproject('[project]\nname = "fn"\ndependencies = ["Flask>=3", "six"]\n')
    assert found is not None
    assert found.source == "pyproject.toml"
    assert found.specifiers == ("Flask>=3", "six")
    assert found.pyproject_text == "Flask>=3\nsix\n"
    assert found.names == ("flask", "six")
    assert parse_pyproject('[project]\nname = "fn"\n') is None
    assert parse_pyproject("[tool.black]\nline-length = 1\n") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[project]\ndynamic = ["dependencies"]\n', "dynamic"),
        ("[project]\ndependencies = [1]\n", "strings"),
        ('[project]\ndependencies = ["not a requirement!"]\n', "not a requirement"),
        ("[project\n", "TOML"),
    ],
)
def test_bad_pyproject_dependencies_are_refused(text: str, message: str) -> None:
    with pytest.raises(PackageBuildError, match=message):
        parse_pyproject(text)


def test_requirements_txt_wins_over_pyproject_and_empty_means_none(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["flask"]\n')
    found = find_requirements(tmp_path)
    assert found is not None and found.source == "pyproject.toml"
    (tmp_path / "requirements.txt").write_text("six\n")
    found = find_requirements(tmp_path)
    assert found is not None and found.specifiers == ("six",)
    (tmp_path / "requirements.txt").write_text("# nothing yet\n")
    assert find_requirements(tmp_path) is None
    assert find_requirements(tmp_path / "nowhere") is None


def test_the_package_pip_found_no_distribution_for_is_named() -> None:
    output = (
        "Collecting docopt==0.6.2\n"
        "ERROR: Could not find a version that satisfies the requirement docopt==0.6.2 "
        "(from versions: none)\n"
        "ERROR: No matching distribution found for docopt==0.6.2\n"
    )
    assert missing_distribution(output) == "docopt==0.6.2"
    assert project_name("docopt==0.6.2") == "docopt"
    assert project_name("Zope.Interface>=5") == "zope-interface"
    assert missing_distribution("ERROR: ResolutionImpossible: ...") is None

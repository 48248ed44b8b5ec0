"""The builder's decisions around pip: source-only requirements, the cache, the config blob.

pip itself is replaced by a stand-in that answers as pip does, so the loop (install, build the
missing sdist, accept or refuse its wheel, install again) runs without an index.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nest.package import PackageBuildError
from nest.package.build import (
    Builder,
    Distribution,
    installed_distributions,
    package_config,
    source_build_problem,
)
from nest.package.requirements import parse_pyproject
from nest.package.target import Target, expand_platform
from sandbox.layers import CODE_MEDIA_TYPE, DEPENDENCIES_MEDIA_TYPE

HOST = Target("3.11", "cp311", (*expand_platform("manylinux_2_36_x86_64"), "linux_x86_64"))
OTHER = Target("3.12", "cp312", expand_platform("manylinux_2_28_x86_64"))
NO_WHEEL = "ERROR: No matching distribution found for foo==1.0\n"


def _dist_info(site: Path, name: str, version: str, purelib: bool) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "WHEEL").write_text(f"Wheel-Version: 1.0\nRoot-Is-Purelib: {str(purelib).lower()}\n")


class FakePip(Builder):
    """pip as a script: no wheel for foo on the index; `pip wheel foo` yields `self.wheel`."""

    def __init__(self, cache: Path, wheel: str, has_wheel: bool = False) -> None:
        self.said: list[str] = []
        super().__init__(cache, self.said.append)
        self.wheel = wheel
        self.has_wheel = has_wheel
        self.calls: list[str] = []

    def _pip(self, argv: list[str], cwd: Path) -> tuple[bool, str]:
        verb = argv[3]
        self.calls.append(verb)
        if verb == "wheel":
            (Path(argv[argv.index("-w") + 1]) / self.wheel).write_bytes(b"wheel")
            return True, "Successfully built foo"
        links = Path(argv[argv.index("--find-links") + 1])
        if not self.has_wheel and not any(links.glob("foo-*.whl")):
            return False, NO_WHEEL
        site = Path(argv[argv.index("--target") + 1])
        (site / "foo").mkdir(parents=True)
        (site / "foo" / "__init__.py").write_text("VERSION = '1.0'\n")
        (site / "bin").mkdir()
        (site / "bin" / "foo").write_text("#!/here/python\n")
        _dist_info(site, "foo", "1.0", purelib=self.wheel.endswith("none-any.whl"))
        return True, "Successfully installed foo-1.0"


def _function(tmp_path: Path, requirements: str = "foo==1.0\n") -> Path:
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "main.py").write_text("import foo\ndef handler(e, c):\n    return foo.VERSION\n")
    (fn / "requirements.txt").write_text(requirements)
    return fn


def test_a_compiled_sdist_for_another_abi_is_refused_naming_the_package(tmp_path: Path) -> None:
    builder = FakePip(tmp_path / "cache", "foo-1.0-cp311-cp311-linux_x86_64.whl")
    with pytest.raises(PackageBuildError) as caught:
        builder.build(_function(tmp_path), OTHER)
    message = str(caught.value)
    assert message.startswith("foo: ")
    assert "cp312-manylinux_2_28_x86_64" in message and "compiles native code" in message
    assert builder.calls == ["install", "wheel"]  # refused before installing anything


def test_a_compiled_sdist_is_built_where_the_interpreter_is_the_pools(tmp_path: Path) -> None:
    builder = FakePip(tmp_path / "cache", "foo-1.0-cp311-cp311-linux_x86_64.whl")
    package = builder.build(_function(tmp_path), HOST)
    assert builder.calls == ["install", "wheel", "install"]
    assert [media for media, _ in package.layers] == [DEPENDENCIES_MEDIA_TYPE, CODE_MEDIA_TYPE]
    assert package.distributions == (Distribution("foo", "1.0", native=True),)
    assert json.loads(package.config)["distributions"] == [
        {"name": "foo", "version": "1.0", "native": True}
    ]


def test_a_pure_sdist_fits_any_pool(tmp_path: Path) -> None:
    builder = FakePip(tmp_path / "cache", "foo-1.0-py3-none-any.whl")
    package = builder.build(_function(tmp_path), OTHER)
    assert package.distributions == (Distribution("foo", "1.0", native=False),)


def test_a_relative_function_directory_gives_pip_a_requirements_file_it_can_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pip runs with cwd= the function's directory: a relative -r would be looked up inside it.
    class Checking(FakePip):
        def _pip(self, argv: list[str], cwd: Path) -> tuple[bool, str]:
            if "-r" in argv:
                requirements = Path(argv[argv.index("-r") + 1])
                assert (cwd / requirements).is_file(), (cwd, requirements)
            return super()._pip(argv, cwd)

    _function(tmp_path)
    monkeypatch.chdir(tmp_path)
    builder = Checking(tmp_path / "cache", "foo-1.0-py3-none-any.whl", has_wheel=True)
    package = builder.build(Path("fn"), HOST)
    assert package.distributions == (Distribution("foo", "1.0", native=False),)


def test_the_dependency_layer_is_cached_by_requirements_and_target(tmp_path: Path) -> None:
    fn = _function(tmp_path)
    builder = FakePip(tmp_path / "cache", "foo-1.0-py3-none-any.whl", has_wheel=True)
    first = builder.build(fn, HOST)
    (fn / "main.py").write_text("import foo  # new code, same requirements\n")
    second = builder.build(fn, HOST)
    assert builder.calls == ["install"]  # pip ran once
    assert first.layers[0][1].digest == second.layers[0][1].digest
    assert first.layers[1][1].digest != second.layers[1][1].digest
    builder.build(fn, OTHER)  # another target is another layer
    assert builder.calls == ["install", "install"]
    builder.rebuild = True
    builder.build(fn, HOST)
    assert builder.calls == ["install", "install", "install"]


def test_pip_failures_other_than_a_missing_wheel_are_reported(tmp_path: Path) -> None:
    class Broken(FakePip):
        def _pip(self, argv: list[str], cwd: Path) -> tuple[bool, str]:
            return False, "ERROR: ResolutionImpossible: foo 1.0 needs bar<1, baz needs bar>2"

    with pytest.raises(PackageBuildError, match="ResolutionImpossible"):
        Broken(tmp_path / "cache", "x").build(_function(tmp_path), HOST)


def test_a_directory_without_requirements_has_only_a_code_layer(tmp_path: Path) -> None:
    fn = _function(tmp_path, requirements="")
    builder = FakePip(tmp_path / "cache", "unused")
    package = builder.build(fn, HOST)
    assert [media for media, _ in package.layers] == [CODE_MEDIA_TYPE]
    assert builder.calls == []


def test_a_source_build_problem_only_for_wheels_the_pool_cannot_import() -> None:
    assert source_build_problem("foo", "foo-1.0-py3-none-any.whl", OTHER, HOST) is None
    assert source_build_problem("foo", "foo-1.0-cp311-cp311-linux_x86_64.whl", HOST, HOST) is None
    problem = source_build_problem("foo", "foo-1.0-cp311-cp311-linux_x86_64.whl", OTHER, HOST)
    assert problem is not None and "foo" in problem and "cp312" in problem


def test_the_config_blob_is_canonical_json() -> None:
    reqs = parse_pyproject('[project]\ndependencies = ["foo==1.0"]\n')
    dists = (Distribution("foo", "1.0", False),)
    config = package_config(HOST, reqs, dists)
    assert config == package_config(HOST, reqs, dists)
    assert b" " not in config
    doc = json.loads(config)
    assert doc["python"]["abi"] == "cp311" and doc["requirements"] == ["foo==1.0"]
    assert doc["requirementsFrom"] == "pyproject.toml"


def test_installed_distributions_read_metadata_and_purelib(tmp_path: Path) -> None:
    _dist_info(tmp_path, "Flask", "3.0.0", purelib=True)
    _dist_info(tmp_path, "pydantic_core", "2.16.3", purelib=False)
    assert installed_distributions(tmp_path) == (
        Distribution("Flask", "3.0.0", False),
        Distribution("pydantic_core", "2.16.3", True),
    )

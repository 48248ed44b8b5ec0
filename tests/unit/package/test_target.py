"""Wheel tags of the pool: what pip is told, and which wheels fit."""

from __future__ import annotations

import sys

import pytest
from packaging import tags

from nest.package import PackageBuildError
from nest.package.target import Target, expand_platform, host_target, target_for

POOL = Target(
    python_version="3.12", abi="cp312", platforms=expand_platform("manylinux_2_28_x86_64")
)


def test_a_pep600_platform_covers_every_older_glibc_and_the_legacy_names() -> None:
    expanded = expand_platform("manylinux_2_28_x86_64")
    assert expanded[0] == "manylinux_2_28_x86_64"
    assert expanded[-1] == "manylinux1_x86_64"
    for tag in ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64"):
        assert tag in expanded
    assert "manylinux_2_29_x86_64" not in expanded
    assert "linux_x86_64" not in expanded  # a local build does not fit another machine
    arm = expand_platform("manylinux_2_17_aarch64")
    assert "manylinux2014_aarch64" in arm and "manylinux2010_aarch64" not in arm
    assert expand_platform("macosx_11_0_arm64") == ("macosx_11_0_arm64",)


def test_pip_is_told_the_pools_tags_not_this_machines() -> None:
    args = POOL.pip_args()
    assert args[:6] == ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]
    assert args.count("--platform") == len(POOL.platforms)
    assert args[args.index("--platform") + 1] == "manylinux_2_28_x86_64"
    assert POOL.describe() == "cp312-manylinux_2_28_x86_64"


@pytest.mark.parametrize(
    ("wheel", "fits"),
    [
        ("six-1.16.0-py2.py3-none-any.whl", True),
        ("pydantic_core-2.16.3-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
        ("cryptography-42.0.5-cp39-abi3-manylinux_2_28_x86_64.whl", True),
        ("pydantic_core-2.16.3-cp311-cp311-manylinux_2_17_x86_64.whl", False),
        ("numpy-1.26.4-cp312-cp312-manylinux_2_34_x86_64.whl", False),  # newer glibc
        ("numpy-1.26.4-cp312-cp312-macosx_11_0_arm64.whl", False),
        ("foo-1.0-cp312-cp312-linux_x86_64.whl", False),  # built on some machine
        ("not-a-wheel.tar.gz", False),
    ],
)
def test_which_wheels_fit_the_pool(wheel: str, fits: bool) -> None:
    assert POOL.accepts(wheel) is fits


def test_overrides_change_the_abi_with_the_version_and_expand_platforms() -> None:
    host = Target(python_version="3.11", abi="cp311", platforms=("manylinux_2_36_x86_64",))
    assert target_for(host) == host
    other = target_for(host, "3.12", ["manylinux_2_17_x86_64"])
    assert other.abi == "cp312"
    assert other.platforms == expand_platform("manylinux_2_17_x86_64")
    assert target_for(host, "3.11").abi == "cp311"
    with pytest.raises(PackageBuildError, match=r"3\.N"):
        target_for(host, "python3")


def test_the_host_target_is_this_interpreter() -> None:
    host = host_target()
    assert host.python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert host.abi == next(iter(tags.sys_tags())).abi
    assert set(host.platforms) == set(tags.platform_tags())
    assert not host.platforms[0].startswith("linux_")  # a manylinux tag names the target
    # Whatever this interpreter would install, the layer built for it accepts.
    assert str(next(iter(tags.sys_tags()))) in host.supported_tags()

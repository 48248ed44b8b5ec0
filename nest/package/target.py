"""Which interpreter and platform a dependency layer is built for, as wheel tags.

The layer is installed by pip on the machine that runs `nest deploy` but imported by the pool's
interpreter, so pip is told the pool's tags (`--python-version`, `--implementation`, `--abi`,
`--platform`) instead of reading this machine's. Where the pool's tags come from: by default
this interpreter and this machine, which is exact for the local cluster (its pool pods run this
very interpreter: see nest_cluster.control_plane.node_env) and for a pool image built from the
same base; `nest deploy --python-version/--platform` names another pool's. pip does not widen
`manylinux_2_X` tags to the older glibc versions a wheel may require, so `expand_platform` does,
as the platform's own interpreter would (PEP 600).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

from packaging import tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from nest.package import PackageBuildError

_PEP600 = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")
_VERSION = re.compile(r"^3\.\d{1,2}$")
# The legacy manylinux names and the glibc they stand for (PEP 513, 571, 599).
_LEGACY = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}
_LEGACY_ARCHES = {
    "manylinux2014": {"x86_64", "i686", "aarch64", "armv7l", "ppc64", "ppc64le", "s390x"},
    "manylinux2010": {"x86_64", "i686"},
    "manylinux1": {"x86_64", "i686"},
}


@dataclass(frozen=True)
class Target:
    """The pool's interpreter and platform: what the dependency layer's wheels must fit."""

    python_version: str  # "3.11"
    abi: str  # "cp311"
    platforms: tuple[str, ...]  # most specific first, e.g. manylinux_2_36_x86_64, ...
    implementation: str = "cp"

    @property
    def interpreter(self) -> str:
        return f"{self.implementation}{self.python_version.replace('.', '')}"

    def describe(self) -> str:
        return f"{self.abi}-{self.platforms[0] if self.platforms else 'any'}"

    def pip_args(self) -> list[str]:
        """pip's options that make it choose wheels for this target instead of this machine."""
        args = ["--python-version", self.python_version, "--implementation", self.implementation]
        args += ["--abi", self.abi]
        for platform in self.platforms:
            args += ["--platform", platform]
        return args

    def supported_tags(self) -> frozenset[str]:
        """Every wheel tag the target's interpreter accepts (as `pip debug --verbose` lists)."""
        major, minor = (int(p) for p in self.python_version.split("."))
        found = list(tags.cpython_tags((major, minor), [self.abi], list(self.platforms)))
        found += tags.compatible_tags((major, minor), self.interpreter, list(self.platforms))
        return frozenset(str(tag) for tag in found)

    def accepts(self, wheel_filename: str) -> bool:
        """Whether a wheel file (by its name's tags) can be imported by the target."""
        try:
            _, _, _, wheel_tags = parse_wheel_filename(wheel_filename)
        except InvalidWheelFilename:
            return False
        return not {str(t) for t in wheel_tags}.isdisjoint(self.supported_tags())

    def to_json(self) -> dict[str, Any]:
        return {
            "implementation": self.implementation,
            "version": self.python_version,
            "abi": self.abi,
            "platforms": list(self.platforms),
        }


def expand_platform(platform: str) -> tuple[str, ...]:
    """A platform tag and every older one its systems also run (PEP 600 for manylinux_2_X,
    with the legacy manylinux2014/2010/1 names where they exist); others stand alone."""
    matched = _PEP600.match(platform)
    if matched is None:
        return (platform,)
    major, minor, arch = int(matched[1]), int(matched[2]), matched[3]
    expanded: list[str] = []
    for glibc_minor in range(minor, 4, -1):
        expanded.append(f"manylinux_{major}_{glibc_minor}_{arch}")
        legacy = _LEGACY.get((major, glibc_minor))
        if legacy is not None and arch in _LEGACY_ARCHES[legacy]:
            expanded.append(f"{legacy}_{arch}")
    return tuple(expanded)


def host_target() -> Target:
    """This interpreter on this machine, which the local cluster's pool pods run."""
    if sys.implementation.name != "cpython":
        raise PackageBuildError(
            f"building for {sys.implementation.name} is not supported: name the pool's CPython "
            "with --python-version and --platform"
        )
    interpreter = next(iter(tags.sys_tags()))
    platforms = list(dict.fromkeys(tags.platform_tags()))
    # `linux_<arch>` (what a local build is tagged) last: the first platform names the target.
    platforms.sort(key=lambda p: p.startswith("linux_"))
    return Target(
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
        abi=interpreter.abi,
        platforms=tuple(platforms),
    )


def target_for(
    host: Target, python_version: str | None = None, platforms: list[str] | None = None
) -> Target:
    """The host's target with `nest deploy --python-version/--platform` applied."""
    version = python_version or host.python_version
    if not _VERSION.match(version):
        raise PackageBuildError(f"--python-version {version!r}: expected 3.N, e.g. 3.12")
    chosen: tuple[str, ...] = host.platforms
    if platforms:
        chosen = tuple(dict.fromkeys(p for given in platforms for p in expand_platform(given)))
    abi = host.abi if version == host.python_version else f"cp{version.replace('.', '')}"
    return Target(python_version=version, abi=abi, platforms=chosen)

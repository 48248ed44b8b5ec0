"""Building a function package: pip for the pool's tags, then the two reproducible layers.

The dependency layer is what `pip install --target --only-binary=:all:` installs for the pool's
interpreter and platform (nest.package.target), so nothing is compiled for the wrong machine.
A requirement with no fitting wheel (only a source distribution) is built here with this
interpreter and kept if the wheel it yields fits the pool (a pure-Python package always does,
a compiled one when this interpreter's ABI and platform are the pool's); otherwise the build is
refused naming the package. Dependency layers are cached by everything that decides their
content (requirements text, target, pip version), so redeploying code does not rerun pip, and
`--rebuild` re-resolves unpinned requirements.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nest.package import PackageBuildError
from nest.package.requirements import (
    Requirements,
    find_requirements,
    missing_distribution,
    project_name,
)
from nest.package.tarball import Blob, code_files, dependency_files, write_layer
from nest.package.target import Target, host_target
from sandbox.layers import CODE_MEDIA_TYPE, DEPENDENCIES_MEDIA_TYPE

FORMAT_VERSION = 1  # bump when the layer content rules change: old cache entries then miss
MAX_SOURCE_BUILDS = 10
Say = Callable[[str], None]


@dataclass(frozen=True)
class Distribution:
    name: str
    version: str
    native: bool  # its wheel is not pure Python (Root-Is-Purelib: false)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "native": self.native}


@dataclass(frozen=True)
class BuiltPackage:
    """A package ready to push: its config blob and its layers, dependency layer first."""

    config: bytes
    layers: tuple[tuple[str, Blob], ...]  # (media type, blob)
    distributions: tuple[Distribution, ...]

    @property
    def natives(self) -> tuple[str, ...]:
        """Its compiled distributions as "name==version" (what the scheduler must know)."""
        return tuple(f"{d.name}=={d.version}" for d in self.distributions if d.native)


def package_config(
    target: Target, requirements: Requirements | None, distributions: tuple[Distribution, ...]
) -> bytes:
    """The config blob: canonical JSON (sorted keys, no spaces), so it has one digest."""
    doc = {
        "python": target.to_json(),
        "requirements": list(requirements.specifiers) if requirements else [],
        "requirementsFrom": requirements.source if requirements else None,
        "distributions": [d.to_json() for d in distributions],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def cache_key(requirements: Requirements, target: Target, pip_version: str) -> str:
    doc = {"format": FORMAT_VERSION, "pip": pip_version, "target": target.to_json()}
    doc["requirements"] = requirements.text
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def installed_distributions(site: Path) -> tuple[Distribution, ...]:
    """What pip installed into `site`, from each .dist-info's METADATA and WHEEL files."""
    found = []
    parser = email.parser.HeaderParser()
    for info in sorted(site.glob("*.dist-info")):
        meta = parser.parsestr((info / "METADATA").read_text(encoding="utf-8", errors="replace"))
        wheel_path = info / "WHEEL"
        wheel = parser.parsestr(wheel_path.read_text() if wheel_path.exists() else "")
        purelib = str(wheel.get("Root-Is-Purelib", "true")).strip().lower() == "true"
        found.append(Distribution(str(meta["Name"]), str(meta["Version"]), not purelib))
    return tuple(sorted(found, key=lambda d: project_name(d.name)))


def pip_error(output: str) -> str:
    """The line of pip's output that says what failed (its last `ERROR:` line), for the first
    line of a message (a build Job's status shows that line); else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["no output"])[-1]


def source_build_problem(name: str, wheel: str, target: Target, host: Target) -> str | None:
    """Why a wheel this machine built from `name`'s source distribution cannot go into the
    target's layer (None when it fits: pure Python, or this interpreter is the pool's)."""
    if target.accepts(wheel):
        return None
    return (
        f"{name}: no wheel on the index fits the pool ({target.describe()}), and its source "
        f"distribution compiles native code ({wheel}) that this interpreter "
        f"({host.describe()}) cannot build for the pool: build the package where the "
        f"interpreter is the pool's, or require a version of {name} with wheels for {target.abi}"
    )


class Builder:
    """Builds packages with this interpreter's pip, caching layers under `cache`."""

    def __init__(self, cache: Path, say: Say, rebuild: bool = False) -> None:
        self.cache = cache
        self.say = say
        self.rebuild = rebuild

    @property
    def blobs(self) -> Path:
        return self.cache / "blobs" / "sha256"

    def build(self, directory: Path, target: Target) -> BuiltPackage:
        if not directory.is_dir():
            raise PackageBuildError(f"{directory}: a function package is built from a directory")
        requirements = find_requirements(directory)
        layers: list[tuple[str, Blob]] = []
        distributions: tuple[Distribution, ...] = ()
        if requirements is not None:
            deps, distributions = self.dependency_layer(directory, requirements, target)
            layers.append((DEPENDENCIES_MEDIA_TYPE, deps))
        files = code_files(directory)
        if not files:
            raise PackageBuildError(f"{directory}: the directory holds no code")
        code = self._store(lambda out: write_layer(files, out))
        self.say(f"code layer {code.digest[:19]} ({_size(code.size)}, {len(files)} files)")
        layers.append((CODE_MEDIA_TYPE, code))
        config = package_config(target, requirements, distributions)
        return BuiltPackage(config, tuple(layers), distributions)

    def _store(self, write: Callable[[Path], Blob]) -> Blob:
        """Write a layer to a temporary file, then keep it in the cache under its digest."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".partial-")
        os.close(fd)
        try:
            blob = write(Path(tmp))
            final = self.blobs / blob.digest.split(":", 1)[1]
            os.replace(tmp, final)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return Blob(final, blob.digest, blob.size)

    def dependency_layer(
        self, directory: Path, requirements: Requirements, target: Target
    ) -> tuple[Blob, tuple[Distribution, ...]]:
        index = self.cache / "dependencies" / f"{cache_key(requirements, target, _pip())}.json"
        if not self.rebuild and index.exists():
            entry = json.loads(index.read_text())
            blob = self.blobs / entry["digest"].split(":", 1)[1]
            if blob.exists():
                dists = tuple(Distribution(**d) for d in entry["distributions"])
                self.say(
                    f"dependency layer {entry['digest'][:19]} ({_size(entry['size'])}, "
                    f"{len(dists)} distributions, cached; --rebuild to resolve again)"
                )
                return Blob(blob, entry["digest"], entry["size"]), dists
        names = ", ".join(requirements.names) or f"{len(requirements.specifiers)} requirements"
        self.say(f"installing {names} from {requirements.source} for {target.describe()} (pip)")
        with tempfile.TemporaryDirectory(prefix="nest-package-") as work:
            site = self._install(directory, requirements, target, Path(work))
            dists = installed_distributions(site)
            files = dependency_files(site)
            blob = self._store(lambda out: write_layer(files, out))
        index.parent.mkdir(parents=True, exist_ok=True)
        entry = {"digest": blob.digest, "size": blob.size}
        entry["distributions"] = [d.to_json() for d in dists]
        index.write_text(json.dumps(entry, indent=2))
        native = [d.name for d in dists if d.native]
        self.say(
            f"dependency layer {blob.digest[:19]} ({_size(blob.size)}, {len(dists)} "
            f"distributions{', native: ' + ', '.join(native) if native else ''})"
        )
        return blob, dists

    def _install(
        self, directory: Path, requirements: Requirements, target: Target, work: Path
    ) -> Path:
        """pip install for the target; source-only requirements built here when they fit."""
        wheels = work / "wheels"
        wheels.mkdir()
        if requirements.pyproject_text is not None:
            req_file = work / "requirements.txt"
            req_file.write_text(requirements.pyproject_text)
        else:
            req_file = directory.resolve() / requirements.source  # pip runs with cwd=directory
        built: set[str] = set()
        while True:
            site = work / "site"
            shutil.rmtree(site, ignore_errors=True)
            argv = [
                sys.executable, "-m", "pip", "install", "--target", str(site),
                "--only-binary=:all:", *target.pip_args(), "--no-compile",
                "--no-warn-script-location", "--disable-pip-version-check", "--no-input",
                "--progress-bar", "off", "--find-links", str(wheels), "-r", str(req_file),
            ]  # fmt: skip
            ok, output = self._pip(argv, directory)
            if ok:
                return site
            missing = missing_distribution(output)
            name = project_name(missing) if missing else None
            if missing is None or name in built or len(built) >= MAX_SOURCE_BUILDS:
                raise PackageBuildError(
                    f"pip could not install the requirements: {pip_error(output)}\n{output}"
                )
            self._build_from_source(missing, directory, target, wheels)
            built.add(str(name))

    def _build_from_source(
        self, requirement: str, directory: Path, target: Target, wheels: Path
    ) -> None:
        name = project_name(requirement)
        self.say(f"{name}: no wheel for {target.describe()}; building it from source")
        with tempfile.TemporaryDirectory(prefix="nest-wheel-") as out:
            argv = [
                sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary", name,
                "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
                "-w", out, requirement,
            ]  # fmt: skip
            ok, output = self._pip(argv, directory)
            made = sorted(Path(out).glob("*.whl"))
            if not ok and missing_distribution(output) is not None:
                raise PackageBuildError(
                    f"{name}: no wheel for {requirement} fits {target.describe()}, and the index "
                    f"has no source distribution of it either:\n{output}"
                )
            if not ok or not made:
                raise PackageBuildError(
                    f"{name}: no wheel fits {target.describe()} and building it from source "
                    f"failed:\n{output}"
                )
            wheel = made[0]
            problem = source_build_problem(name, wheel.name, target, host_target())
            if problem is not None:
                raise PackageBuildError(problem)
            shutil.copy2(wheel, wheels / wheel.name)

    def _pip(self, argv: list[str], cwd: Path) -> tuple[bool, str]:
        """Run pip, echoing its Collecting/Building lines as progress; (ok, its last lines)."""
        tail: deque[str] = deque(maxlen=40)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                if not line or line.startswith("WARNING: Location"):
                    continue
                tail.append(line)
                if line.startswith(("Collecting ", "Building wheel", "Successfully installed")):
                    self.say(f"  pip: {line}")
        return proc.returncode == 0, "\n".join(tail)


def _pip() -> str:
    from importlib.metadata import version

    return version("pip")


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"

"""What a function directory declares it depends on, read the way pip reads it.

A function brings its dependencies as its authors already write them: a `requirements.txt`, or
the `[project].dependencies` of a `pyproject.toml`. pip itself installs from the file (so every
pip rule holds, paths relative to the directory included); this module only reads enough to
decide things before running pip: whether there is anything to install, which options cannot
produce a layer for another machine (editable installs, `--no-binary`), what the dependency
layer's cache key covers (the text of every file pulled in by `-r`/`-c`), and which package pip
named when no wheel fits.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from nest.package import PackageBuildError

REQUIREMENTS_FILE = "requirements.txt"
PYPROJECT_FILE = "pyproject.toml"
# Options pip accepts in a requirements file that make sense for a layer built elsewhere.
_INDEX_OPTIONS = frozenset(
    {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--no-index", "--pre",
     "--prefer-binary", "--only-binary", "--trusted-host", "--use-feature"}
)  # fmt: skip
_INCLUDE_OPTIONS = frozenset({"-r", "--requirement", "-c", "--constraint"})
_COMMENT = re.compile(r"(^|\s+)#.*$")
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")


@dataclass(frozen=True)
class Requirements:
    """A directory's declared dependencies.

    `source` is the file they came from; `specifiers` the requirement lines (without options);
    `text` every byte that can change pip's answer, for the cache key; `pyproject_text` is what
    to hand pip as a requirements file when they came from pyproject.toml (pip reads
    requirements.txt itself).
    """

    source: str
    specifiers: tuple[str, ...]
    text: str
    pyproject_text: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Canonical project names of the named requirements (URLs and paths have none)."""
        found = []
        for spec in self.specifiers:
            try:
                found.append(canonicalize_name(Requirement(spec).name))
            except InvalidRequirement:
                continue
        return tuple(found)


def logical_lines(text: str) -> list[str]:
    """pip's logical lines: continuations joined, comments and blank lines dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        line = _COMMENT.sub("", pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    tail = _COMMENT.sub("", pending).strip()
    return [*lines, tail] if tail else lines


def _option(line: str) -> tuple[str, str | None]:
    """`--opt=value`, `--opt value` or `-rfile` as (option, value)."""
    if line.startswith("--"):
        name, sep, value = line.partition("=")
        if sep:
            return name, value.strip()
        name, _, value = line.partition(" ")
        return name, value.strip() or None
    name, rest = line[:2], line[2:].strip()
    return name, rest or None


def parse_requirements_file(path: Path, seen: frozenset[Path] = frozenset()) -> Requirements:
    """Read a requirements file and the files it includes (-r, -c), relative to it as pip does.

    Raises PackageBuildError naming the line for what cannot become a portable layer.
    """
    path = path.resolve()
    if path in seen:
        raise PackageBuildError(f"{path}: includes itself (-r/-c loop)")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PackageBuildError(f"{path}: cannot read the requirements file ({exc})") from exc
    specifiers: list[str] = []
    texts = [f"# {path.name}\n{text}"]
    for line in logical_lines(text):
        if not line.startswith("-"):
            specifiers.append(line.split(" --", 1)[0].strip())  # per-line options (--hash) off
            continue
        option, value = _option(line)
        if option in ("-e", "--editable"):
            raise PackageBuildError(
                f"{path.name}: {line!r}: an editable requirement cannot be packaged; "
                "name the package (or a path to it) instead"
            )
        if option == "--no-binary":
            raise PackageBuildError(
                f"{path.name}: {line!r}: the dependency layer is built from wheels for the "
                "pool's platform; --no-binary would compile for this machine instead"
            )
        if option in _INCLUDE_OPTIONS:
            if not value:
                raise PackageBuildError(f"{path.name}: {line!r} names no file")
            included = parse_requirements_file(path.parent / shlex.split(value)[0], seen | {path})
            if option in ("-r", "--requirement"):
                specifiers.extend(included.specifiers)
            texts.append(included.text)
            continue
        if option not in _INDEX_OPTIONS:
            raise PackageBuildError(f"{path.name}: {line!r}: option {option} is not supported")
    return Requirements(path.name, tuple(specifiers), "\n".join(texts))


def parse_pyproject(text: str) -> Requirements | None:
    """`[project].dependencies` of a pyproject.toml; None when it declares none."""
    try:
        project = tomllib.loads(text).get("project") or {}
    except tomllib.TOMLDecodeError as exc:
        raise PackageBuildError(f"{PYPROJECT_FILE}: not valid TOML ({exc})") from exc
    if "dependencies" in (project.get("dynamic") or []):
        raise PackageBuildError(
            f"{PYPROJECT_FILE}: dependencies are dynamic; declare them in [project] "
            f"or in {REQUIREMENTS_FILE}"
        )
    deps = project.get("dependencies") or []
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise PackageBuildError(f"{PYPROJECT_FILE}: [project].dependencies must be strings")
    for dep in deps:
        try:
            Requirement(dep)
        except InvalidRequirement as exc:
            raise PackageBuildError(f"{PYPROJECT_FILE}: dependency {dep!r}: {exc}") from exc
    if not deps:
        return None
    as_file = "".join(f"{d}\n" for d in deps)
    return Requirements(PYPROJECT_FILE, tuple(deps), f"# {PYPROJECT_FILE}\n{as_file}", as_file)


def find_requirements(directory: Path) -> Requirements | None:
    """The directory's declared dependencies: requirements.txt if there is one (it is usually
    the pinned list), else pyproject.toml's; None when it declares nothing to install."""
    req_file = directory / REQUIREMENTS_FILE
    if req_file.is_file():
        found = parse_requirements_file(req_file)
        return found if found.specifiers else None
    pyproject = directory / PYPROJECT_FILE
    if pyproject.is_file():
        return parse_pyproject(pyproject.read_text(encoding="utf-8"))
    return None


def missing_distribution(pip_output: str) -> str | None:
    """The requirement pip found no usable distribution for (pip's own wording), e.g.
    'foo==1.0' from "ERROR: No matching distribution found for foo==1.0"; None otherwise."""
    found = _NO_MATCH.findall(pip_output)
    return found[-1] if found else None


def project_name(requirement: str) -> str:
    """The canonical project name of a requirement string, or the string itself."""
    try:
        return canonicalize_name(Requirement(requirement).name)
    except InvalidRequirement:
        return requirement

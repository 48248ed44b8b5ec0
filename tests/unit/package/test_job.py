"""`nest-build`, the build Job's command: pull the context, build, push, answer in the result.

Against a real registry process on loopback; pip is replaced (as in test_build) where a test
needs a requirement, so nothing is downloaded.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from nest.package.build import Builder
from nest.package.job import MAX_RESULT_BYTES, fit_message, main
from sandbox.context import push_context
from sandbox.layers import CODE_MEDIA_TYPE, Reference, client, pull_layers
from tests.loopback_registry import registry  # noqa: F401


def _context(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return gzip.compress(buf.getvalue())


CODE = {"main.py": "def handler(event, context):\n    return 'built'\n"}


def test_a_short_message_is_kept_whole() -> None:
    assert fit_message("foo: no wheel fits\ndetails\n") == "foo: no wheel fits\ndetails"
    assert fit_message("   ") == "the build failed without a message"


def test_a_long_message_keeps_its_first_line_and_its_end_within_the_limit() -> None:
    text = "bar: no wheel for bar==2 fits cp311\n" + "\n".join(f"line {i} é" for i in range(2000))
    fitted = fit_message(text)
    assert len(fitted.encode()) <= MAX_RESULT_BYTES
    assert fitted.startswith("bar: no wheel for bar==2 fits cp311\n")
    assert fitted.endswith("line 1999 é")
    assert "[…]" in fitted


def test_a_context_is_built_and_pushed_beside_it(
    registry: str,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    context = push_context(_context(CODE), registry, registry, "nest/team-a")
    result = tmp_path / "termination-log"
    assert main(["--context", context, "--tag", "hello", "--result", str(result)]) == 0
    answer = json.loads(result.read_text())
    assert answer["natives"] == []
    ref = Reference.parse(answer["ref"])
    assert (ref.registry, ref.repository) == (registry, "nest/team-a")
    package = pull_layers(answer["ref"], tmp_path / "blobs")
    assert [layer.media_type for layer in package.layers] == [CODE_MEDIA_TYPE]
    tagged = client(registry).do_request(
        f"http://{registry}/v2/nest/team-a/manifests/hello", "HEAD",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )  # fmt: skip
    assert tagged.headers["Docker-Content-Digest"] == ref.digest
    log = capsys.readouterr().out
    assert f"pulling context {context}" in log and f"built {answer['ref']}" in log


def test_a_requirement_without_a_fitting_wheel_fails_naming_it(
    registry: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_index(self: Builder, argv: list[str], cwd: Path) -> tuple[bool, str]:
        return False, "ERROR: No matching distribution found for foo==1.0\n"

    monkeypatch.setattr(Builder, "_pip", no_index)
    data = _context({**CODE, "requirements.txt": "foo==1.0\n"})
    context = push_context(data, registry, registry, "nest/team-a")
    result = tmp_path / "termination-log"
    assert main(["--context", context, "--result", str(result)]) == 1
    first = result.read_text().splitlines()[0]
    assert first.startswith("foo: no wheel for foo==1.0 fits cp3")


def test_a_context_that_is_not_there_fails_with_a_message(
    registry: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    missing = f"{registry}/nest/team-a@sha256:{'0' * 64}"
    result = tmp_path / "termination-log"
    assert main(["--context", missing, "--result", str(result)]) == 1
    assert "HTTP 404" in result.read_text()
    assert main(["--context", "not-a-ref", "--result", str(result)]) == 1
    assert "not a registry/repository@sha256" in result.read_text()


def test_an_unwritable_result_is_a_failure(tmp_path: Path) -> None:
    assert main(["--context", "not-a-ref", "--result", str(tmp_path / "no" / "dir")]) == 1

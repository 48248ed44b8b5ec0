"""Build contexts: what an uploaded directory may hold, and its round trip through a registry.

The rules are checked on archives made here with tarfile (each refusal must name the entry); the
push and the verified pull run against a real registry process on loopback.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from nest.package.tarball import context_archive
from sandbox.context import (
    CONTEXT_CONFIG_MEDIA_TYPE,
    CONTEXT_MEDIA_TYPE,
    MAX_FILES,
    ContextError,
    check_context,
    context_layer,
    pull_context,
    push_context,
    unpack_context,
)
from sandbox.layers import (
    CONFIG_MEDIA_TYPE,
    Descriptor,
    PackageError,
    Reference,
    client,
    fetch_manifest,
    read_manifest,
)
from tests.loopback_registry import registry  # noqa: F401

DIGEST = "sha256:" + "ab" * 32


def _tar(*entries: tuple[str, bytes | str | None], gz: bool = True) -> bytes:
    """A tar of entries: bytes = a file, None = a directory, "->x" = a symlink to x,
    "=>x" = a hard link to x, "fifo" = a FIFO."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(content, str) and content.startswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                tar.addfile(info)
            elif isinstance(content, str) and content.startswith("=>"):
                info.type, info.linkname = tarfile.LNKTYPE, content[2:]
                tar.addfile(info)
            elif content == "fifo":
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
            else:
                assert isinstance(content, bytes)
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buf.getvalue()) if gz else buf.getvalue()


def test_a_directory_of_files_is_a_context_and_its_files_are_counted() -> None:
    data = _tar((".", None), ("main.py", b"x = 1\n"), ("lib", None), ("lib/u.py", b""))
    assert check_context(data) == 2


@pytest.mark.parametrize(
    ("entries", "named", "why"),
    [
        ([("main.py", b""), ("link", "->/etc/passwd")], "link", "is a link"),
        ([("main.py", b""), ("hard", "=>main.py")], "hard", "is a link"),
        ([("main.py", b""), ("pipe", "fifo")], "pipe", "not a regular file"),
        ([("/etc/cron.d/x", b"")], "/etc/cron.d/x", "escape"),
        ([("../up.py", b"")], "../up.py", "escape"),
        ([("a/../../up.py", b"")], "a/../../up.py", "escape"),
        ([("x" * 256 + ".py", b"")], "x" * 256 + ".py", "component longer than 255"),
        ([("/".join(["d" * 200] * 6), b"")], "/".join(["d" * 200] * 6), "longer than 1024"),
        ([("main.py", b""), ("main.py", b"again")], "main.py", "appears twice"),
        ([("a", b""), ("a/b.py", b"")], "a/b.py", "inside 'a', which is a file"),
        ([("a/b.py", b""), ("a", b"")], "a", "appears twice"),
    ],
)
def test_unsafe_or_impossible_entries_are_refused_naming_them(
    entries: list[tuple[str, bytes | str | None]], named: str, why: str
) -> None:
    with pytest.raises(ContextError) as caught:
        check_context(_tar(*entries))
    assert why in str(caught.value)
    assert caught.value.entry == named
    assert caught.value.permanent


def test_archives_that_are_not_gzip_tars_or_hold_nothing_are_refused() -> None:
    with pytest.raises(ContextError, match="not gzip-compressed"):
        check_context(_tar(("main.py", b""), gz=False))
    with pytest.raises(ContextError, match=r"not a valid \.tar\.gz"):
        check_context(gzip.compress(b"not a tar at all" * 100))
    with pytest.raises(ContextError, match=r"not a valid \.tar\.gz"):
        check_context(_tar(("main.py", os.urandom(10_000)))[:2000])  # cut short
    with pytest.raises(ContextError, match="holds no files"):
        check_context(_tar(("lib", None)))
    good = _tar(("main.py", b"x"))
    with pytest.raises(ContextError, match="data after the end"):
        check_context(good + b"junk")
    with pytest.raises(ContextError, match="incorrect data check"):  # the gzip CRC
        check_context(good[:-8] + b"\0\0\0\0" + good[-4:])


def test_size_and_count_limits_hold_before_anything_is_unpacked() -> None:
    data = _tar(("a.py", b"a" * 600), ("b.py", b"b" * 600))
    with pytest.raises(ContextError, match="more than the limit of 100 bytes"):
        check_context(data, max_bytes=100)
    with pytest.raises(ContextError, match="unpacks to more than 1000 bytes") as caught:
        check_context(data, max_unpacked=1000)
    assert caught.value.entry == "b.py"
    many = _tar(*((f"f{i}", b"") for i in range(MAX_FILES + 1)))
    with pytest.raises(ContextError, match=f"more than {MAX_FILES} files"):
        check_context(many)


def test_a_gzip_bomb_is_refused_without_inflating_it() -> None:
    # Zeros after the tar's end: nothing tar reads, yet the stream is read to its end (a
    # truncated or padded upload is never half a context), and that stops at the limit.
    bomb = gzip.compress(_tar(("main.py", b"x"), gz=False) + b"\0" * (96 * 1024 * 1024))
    assert len(bomb) < 200_000
    with pytest.raises(ContextError, match="decompresses to more than its size limit"):
        check_context(bomb, max_unpacked=1024)


def test_unpacking_writes_the_files_with_their_modes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "main.py").write_text("import pkg\n")
    (src / "pkg" / "__init__.py").write_text("")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    (src / "requirements.txt").write_text("six\n")
    data = context_archive(src, tmp_path / "ctx.tar.gz").path.read_bytes()
    assert unpack_context(data, tmp_path / "out") == 4
    out = tmp_path / "out"
    assert (out / "requirements.txt").read_text() == "six\n"  # the build reads it
    assert (out / "pkg" / "__init__.py").exists()
    assert stat.S_IMODE(os.stat(out / "run.sh").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(out / "main.py").st_mode) == 0o644
    with pytest.raises(ContextError, match="not empty"):
        unpack_context(data, out)


def test_a_manifest_must_be_a_contexts() -> None:
    config = Descriptor(CONTEXT_CONFIG_MEDIA_TYPE, DIGEST, 2)
    layer = Descriptor(CONTEXT_MEDIA_TYPE, DIGEST, 10)
    assert context_layer(config, [layer], DIGEST) == layer
    with pytest.raises(ContextError, match="not a Nest build context"):
        context_layer(Descriptor(CONFIG_MEDIA_TYPE, DIGEST, 2), [layer], DIGEST)
    with pytest.raises(ContextError, match="exactly one"):
        context_layer(config, [layer, layer], DIGEST)


def test_a_context_round_trips_through_a_registry_by_digest(
    registry: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    data = _tar(("main.py", b"def handler(e, c):\n    return 1\n"), ("requirements.txt", b"six\n"))
    ref = push_context(data, registry, "registry.example:5000", "nest/team-a")
    parsed = Reference.parse(ref)
    assert (parsed.registry, parsed.repository) == ("registry.example:5000", "nest/team-a")
    # The same bytes are the same artifact: an upload of unchanged code is the same reference.
    assert push_context(data, registry, "registry.example:5000", "nest/team-a") == ref

    here = str(Reference(registry, parsed.repository, parsed.digest))
    reg = client(registry)
    config, layers = read_manifest(fetch_manifest(reg, Reference.parse(here)), parsed.digest)
    assert config.media_type == CONTEXT_CONFIG_MEDIA_TYPE
    assert [layer.media_type for layer in layers] == [CONTEXT_MEDIA_TYPE]

    assert pull_context(here, tmp_path / "out") == 2
    assert (tmp_path / "out" / "requirements.txt").read_bytes() == b"six\n"

    missing = str(Reference(registry, parsed.repository, DIGEST))
    with pytest.raises(PackageError) as caught:
        pull_context(missing, tmp_path / "missing")
    assert not caught.value.permanent  # a registry being restored may have it again


def test_a_bad_context_is_refused_before_it_reaches_the_registry(
    registry: str,  # noqa: F811
) -> None:
    with pytest.raises(ContextError, match="'evil' is a link"):
        push_context(_tar(("main.py", b""), ("evil", "->/")), registry, registry, "nest/x")


def test_the_context_config_counts_the_files(registry: str) -> None:  # noqa: F811
    data = _tar(("a.py", b""), ("b.py", b""), ("c", None))
    ref = Reference.parse(push_context(data, registry, registry, "nest/count"))
    reg = client(registry)
    config, _ = read_manifest(fetch_manifest(reg, ref), ref.digest)
    url = f"http://{registry}/v2/{ref.repository}/blobs/{config.digest}"
    assert json.loads(reg.do_request(url, "GET").content) == {"files": 2}

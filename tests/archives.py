"""Build-context archives for tests: a .tar.gz as a client would upload it.

The gateway's unit tests, its integration tests and the operator's build tests all need the
same small archives (files, and symbolic links an upload must be refused for), so they are
written once here.
"""

from __future__ import annotations

import gzip
import io
import tarfile


def tar_gz(entries: dict[str, str]) -> bytes:
    """A .tar.gz with files (text) and symbolic links (values starting with '->')."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, value in entries.items():
            info = tarfile.TarInfo(name)
            if value.startswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, value[2:]
                tar.addfile(info)
            else:
                info.size = len(value.encode())
                tar.addfile(info, io.BytesIO(value.encode()))
    return gzip.compress(buf.getvalue())

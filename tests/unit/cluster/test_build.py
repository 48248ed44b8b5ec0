"""The pure parts of the Kubernetes build: apt source derivation and openapi package discovery."""

from pathlib import Path

from nest_cluster.build import deb_src_lines, openapi_input_packages

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://example.invalid/already-source
Suites: bookworm
Components: main

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main contrib
Enabled: no
"""


def test_deb822_stanzas_become_one_line_per_suite_with_their_key() -> None:
    lines = deb_src_lines([("debian.sources", DEB822)])
    assert lines == [
        "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://deb.debian.org/debian bookworm main",
        "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://deb.debian.org/debian bookworm-updates main",
    ]


def test_legacy_list_lines_are_mirrored_and_comments_dropped() -> None:
    text = "deb [arch=amd64] http://mirror/debian bookworm main # comment\n# deb http://x y z\n"
    assert deb_src_lines([("sources.list", text)]) == [
        "deb-src [arch=amd64] http://mirror/debian bookworm main"
    ]


def test_disabled_files_are_ignored() -> None:
    assert deb_src_lines([("google.list.disabled-by-farm", "deb http://x y z\n")]) == []


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_openapi_packages_are_tagged_packages_named_through_vendor(tmp_path: Path) -> None:
    tag = "// +k8s:openapi-gen=true\npackage x\n"
    _write(tmp_path, "pkg/apis/a/v1/doc.go", tag)
    _write(tmp_path, "pkg/apis/untagged/doc.go", "package y\n")
    _write(tmp_path, "staging/src/k8s.io/api/core/v1/doc.go", tag)
    _write(tmp_path, "staging/src/k8s.io/sample-apiserver/pkg/apis/w/doc.go", tag)
    _write(tmp_path, "staging/src/k8s.io/code-generator/examples/doc.go", tag)
    packages = openapi_input_packages(tmp_path)
    assert "k8s.io/kubernetes/pkg/apis/a/v1" in packages
    assert "k8s.io/kubernetes/vendor/k8s.io/api/core/v1" in packages
    assert "k8s.io/kubernetes/vendor/k8s.io/apimachinery/pkg/util/intstr" in packages
    assert not any("untagged" in p or "sample-apiserver" in p for p in packages)
    assert not any("code-generator" in p for p in packages)
    assert packages == sorted(packages)

"""Builds the local control plane's Kubernetes binaries from Debian's source package, once.

There is no container engine and no binary download here, so the control plane is compiled from
Debian's `kubernetes` source package (upstream 1.20.2 with its full vendor tree) with Debian's Go.
The steps, and why each exists:

1. the source is fetched with apt's own source download under a private apt configuration
   (deb-src entries derived from the machine's configured Debian sources, private lists), so the
   system's apt sources are never edited;
2. the tree is built in GOPATH mode, where the vendor tree is authoritative;
3. the vendored reflect2 v1.0.1 crashes under Go >= 1.18 and is replaced by Debian's 1.0.2;
4. `pkg/generated/openapi` is not shipped in the tarball and is generated with openapi-gen;
5. the binaries are stripped and cached under a directory keyed by version.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from nest_cluster.errors import ClusterError, UnsupportedMachineError
from nest_cluster.paths import (
    BINARIES,
    DEBIAN_SOURCE_PACKAGE,
    DEBIAN_SOURCE_VERSION,
    KUBERNETES_VERSION,
    ClusterPaths,
)

SYSTEM_PACKAGES = ("etcd-server", "golang-go", "golang-github-modern-go-reflect2-dev", "dpkg-dev")
REFLECT2_DEBIAN = Path("/usr/share/gocode/src/github.com/modern-go/reflect2")
REPO = "k8s.io/kubernetes"
APIMACHINERY_OPENAPI_PACKAGES = (
    "pkg/apis/meta/v1",
    "pkg/runtime",
    "pkg/version",
    "pkg/api/resource",
    "pkg/util/intstr",
)
NO_APT_HELP = (
    "the local cluster is built from Debian packages and this machine has no apt-get. "
    "Point NEST_KUBECONFIG (or KUBECONFIG) at an existing cluster instead."
)


def deb_src_lines(sources: Iterable[tuple[str, str]]) -> list[str]:
    """Turn the machine's apt sources (file name, text) into one-line `deb-src` entries.

    Both formats are understood: deb822 `.sources` stanzas and legacy `deb ...` lines. Only
    binary (`deb`) entries are mirrored, with their signing key, so the source download is
    verified exactly as the machine's binary packages are.
    """
    lines: list[str] = []
    for name, text in sources:
        if name.endswith(".sources"):
            for stanza in _deb822_stanzas(text):
                if "deb" not in stanza.get("types", "").split():
                    continue
                if stanza.get("enabled", "yes").lower() == "no":
                    continue
                opts = f"[signed-by={stanza['signed-by']}] " if "signed-by" in stanza else ""
                for uri in stanza.get("uris", "").split():
                    for suite in stanza.get("suites", "").split():
                        lines.append(f"deb-src {opts}{uri} {suite} {stanza.get('components', '')}")
        elif name.endswith(".list"):
            for raw in text.splitlines():
                line = raw.split("#", 1)[0].strip()
                if line.startswith("deb "):
                    lines.append("deb-src " + line[4:])
    return [line.strip() for line in lines]


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    stanza: dict[str, str] = {}
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if stanza:
                yield stanza
            stanza = {}
        elif ":" in raw and not raw[0].isspace():
            key, _, value = raw.partition(":")
            stanza[key.strip().lower()] = value.strip()
    return


def openapi_input_packages(tree: Path) -> list[str]:
    """Every package of the tree tagged `+k8s:openapi-gen=`, as GOPATH import paths.

    Staging packages are named through `vendor/k8s.io/*` (symlinks into staging), which is how
    the rest of the GOPATH build imports them; code-generator's and sample-apiserver's examples
    belong to other API servers and are left out, as upstream's Makefile does.
    """
    dirs: set[str] = set()
    for root in ("pkg", "cmd", "staging/src/k8s.io"):
        for path in (tree / root).rglob("*.go"):
            rel = path.relative_to(tree).as_posix()
            if "/code-generator/" in rel or "/sample-apiserver/" in rel or "/testdata/" in rel:
                continue
            if "+k8s:openapi-gen=" in path.read_text(errors="replace"):
                dirs.add(path.parent.relative_to(tree).as_posix())
    dirs.update(f"staging/src/k8s.io/apimachinery/{pkg}" for pkg in APIMACHINERY_OPENAPI_PACKAGES)
    return sorted(f"{REPO}/" + d.replace("staging/src/k8s.io/", "vendor/k8s.io/", 1) for d in dirs)


class Builder:
    """Runs the build steps with progress on stderr and the tools' output in a log file."""

    def __init__(self, paths: ClusterPaths) -> None:
        self.paths = paths
        self.work = paths.build_root / "work"
        self.gopath = self.work / "gopath"
        self.tree = self.gopath / "src" / REPO
        self.log_path = paths.build_root / "build.log"
        self._started = time.monotonic()

    def is_built(self) -> bool:
        return all(self.paths.binary(b).is_file() for b in BINARIES)

    def build(self) -> None:
        if self.is_built():
            return
        self.paths.build_root.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("")
        steps = [
            ("installing system packages", self.install_system_packages),
            ("fetching Debian source package", self.fetch_source),
            ("unpacking the source tree", self.unpack),
            ("replacing vendored reflect2 with Debian's 1.0.2", self.patch_vendor),
            ("generating pkg/generated/openapi", self.generate_openapi),
            *[(f"compiling {b}", self._compiler(b)) for b in BINARIES],
        ]
        self._progress(f"building Kubernetes {KUBERNETES_VERSION} (first time only; ~5 min)")
        for n, (title, step) in enumerate(steps, 1):
            self._progress(f"[{n}/{len(steps)}] {title}")
            step()
        shutil.rmtree(self.work, ignore_errors=True)
        self._progress(f"done; binaries cached in {self.paths.bin_dir}")

    def install_system_packages(self) -> None:
        missing = [p for p in SYSTEM_PACKAGES if not _dpkg_installed(p)]
        if not missing:
            return
        if shutil.which("apt-get") is None:
            raise UnsupportedMachineError(NO_APT_HELP)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        self._run(["apt-get", "update", "-qq"], env=env)
        self._run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)

    def fetch_source(self) -> None:
        apt = self.work / "apt"
        (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        etc = Path("/etc/apt")
        files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]
        sources = [(f.name, f.read_text()) for f in files if f.is_file()]
        lines = deb_src_lines(sources)
        if not lines:
            raise ClusterError("no Debian package sources configured in /etc/apt to fetch from")
        (apt / "sources.list").write_text("\n".join(lines) + "\n")
        opts = [
            "-o", f"Dir::Etc::SourceList={apt / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={apt / 'lists'}",
        ]  # fmt: skip
        # A mirror without sources only warns; the source download below is what must succeed.
        self._run(["apt-get", *opts, "update", "-qq"], check=False)
        src = self.work / "src"
        src.mkdir(exist_ok=True)
        pkg = f"{DEBIAN_SOURCE_PACKAGE}={DEBIAN_SOURCE_VERSION}"
        self._run(["apt-get", *opts, "source", "--download-only", pkg], cwd=src)

    def unpack(self) -> None:
        tarballs = sorted((self.work / "src").glob(f"{DEBIAN_SOURCE_PACKAGE}_*.orig.tar.gz"))
        if not tarballs:
            raise ClusterError(f"source download left no orig tarball in {self.work / 'src'}")
        shutil.rmtree(self.tree, ignore_errors=True)
        self.tree.mkdir(parents=True)
        self._run(["tar", "xzf", str(tarballs[0]), "-C", str(self.tree), "--strip-components=1"])

    def patch_vendor(self) -> None:
        if not REFLECT2_DEBIAN.is_dir():
            raise ClusterError(
                f"{REFLECT2_DEBIAN} missing: install golang-github-modern-go-reflect2-dev"
            )
        vendored = self.tree / "vendor/github.com/modern-go/reflect2"
        shutil.rmtree(vendored)
        shutil.copytree(REFLECT2_DEBIAN, vendored)

    def generate_openapi(self) -> None:
        tool = self.work / "openapi-gen"
        self._go(["build", "-o", str(tool), "./vendor/k8s.io/kube-openapi/cmd/openapi-gen"])
        args = {
            "-i": ",".join(openapi_input_packages(self.tree)),
            "-p": f"{REPO}/pkg/generated/openapi",
            "-O": "zz_generated.openapi",
            "-h": "vendor/k8s.io/code-generator/hack/boilerplate.go.txt",
            "-r": str(self.work / "openapi-violations.report"),
        }
        flags = [item for pair in args.items() for item in pair]
        self._run([str(tool), "--logtostderr", *flags], cwd=self.tree, env=self._go_env())

    def _compiler(self, binary: str) -> Callable[[], None]:
        def compile_binary() -> None:
            major, minor, _ = KUBERNETES_VERSION.split(".")
            values = {
                "gitVersion": f"v{KUBERNETES_VERSION}",
                "gitMajor": major,
                "gitMinor": minor,
                "gitTreeState": "clean",
            }
            # /version is served from client-go's copy, the binaries' --version from
            # component-base's: both must carry the real version.
            ldflags = " ".join(
                ["-s -w"]
                + [
                    f"-X {REPO}/vendor/k8s.io/{pkg}.{key}={value}"
                    for pkg in ("component-base/version", "client-go/pkg/version")
                    for key, value in values.items()
                ]
            )
            self.paths.bin_dir.mkdir(parents=True, exist_ok=True)
            partial = self.paths.bin_dir / f".{binary}.partial"
            self._go(["build", "-o", str(partial), "-ldflags", ldflags, f"{REPO}/cmd/{binary}"])
            partial.rename(self.paths.binary(binary))

        return compile_binary

    def _go_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "GOPATH": str(self.gopath),
            "GO111MODULE": "off",
            "GOCACHE": str(self.work / "gocache"),
            "GOFLAGS": "",
        }

    def _go(self, args: list[str]) -> None:
        self._run(["go", *args], cwd=self.tree, env=self._go_env())

    def _run(
        self,
        cmd: list[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> None:
        with self.log_path.open("a") as log:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if check and proc.returncode != 0:
            tail = "".join(self.log_path.read_text().splitlines(keepends=True)[-20:])
            raise ClusterError(
                f"{cmd[0]} failed with exit code {proc.returncode}; last lines of "
                f"{self.log_path}:\n{tail}"
            )

    def _progress(self, message: str) -> None:
        elapsed = time.monotonic() - self._started
        print(f"nest: [{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def _dpkg_installed(package: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return "install ok installed" in out.stdout

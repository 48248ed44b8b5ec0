"""Projected service-account tokens: pod-bound requests, file modes, the kubelet's refresh."""

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from nest_cluster.runner.env import PodFacts
from nest_cluster.runner.kube import token_request
from nest_cluster.runner.layout import PodDir
from nest_cluster.runner.volumes import Fetch, Grant, TokenFile, prepare, refresh, refresh_at

HOUR = 3600.0


def _token(seconds: int, issued: float = 1000.0) -> TokenFile:
    return TokenFile(Path("/x/token"), "sa", ("aud",), seconds, 0o644, None, issued,
                     issued + seconds)  # fmt: skip


def test_refresh_at_80_percent_of_the_lifetime() -> None:
    assert refresh_at(_token(3600)) == 1000.0 + 0.8 * HOUR
    assert refresh_at(_token(600)) == 1000.0 + 480.0


def test_refresh_at_24_hours_at_the_latest() -> None:
    assert refresh_at(_token(7 * 24 * 3600)) == 1000.0 + 24 * HOUR


def test_jitter_only_ever_makes_it_earlier() -> None:
    assert refresh_at(_token(3600), jitter=10.0) == 1000.0 + 0.8 * HOUR - 10.0


class Issuer:
    """A TokenRequest API stand-in that records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], int]] = []
        self.issued: list[TokenFile] = []

    def token(self, sa: str, audiences: list[str], seconds: int) -> Grant:
        self.calls.append((sa, audiences, seconds))
        return Grant(f"jwt-{len(self.calls)}", 5000.0 + len(self.calls))

    def fetch(self) -> Fetch:
        return Fetch(lambda _: None, lambda _: None, self.token, self.issued.append)


def _pod(volume: dict[str, Any], fs_group: int | None = None) -> dict[str, Any]:
    sc = {} if fs_group is None else {"fsGroup": fs_group}
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"serviceAccountName": "builder", "securityContext": sc, "volumes": [volume]},
    }


PROJECTED = {
    "name": "tok",
    "projected": {
        "defaultMode": 0o440,
        "sources": [
            {"serviceAccountToken": {"path": "token", "audience": "nest", "expirationSeconds": 600}}
        ],
    },
}


def test_projected_token_is_requested_written_with_its_mode_and_reported(tmp_path: Path) -> None:
    issuer = Issuer()
    dirs = prepare(_pod(PROJECTED), PodDir(tmp_path), PodFacts("127.0.0.2"), issuer.fetch())
    path = dirs["tok"] / "token"
    assert path.read_text() == "jwt-1"
    assert stat.S_IMODE(path.stat().st_mode) == 0o440
    assert issuer.calls == [("builder", ["nest"], 600)]
    (token,) = issuer.issued
    assert (token.path, token.expires_at, token.issued_at) == (path, 5001.0, 5001.0 - 600)


def test_expiration_defaults_to_an_hour(tmp_path: Path) -> None:
    issuer = Issuer()
    volume = {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}
    prepare(_pod(volume), PodDir(tmp_path), PodFacts("127.0.0.2"), issuer.fetch())
    assert issuer.calls == [("builder", [], 3600)]


def test_refresh_replaces_the_file_atomically(tmp_path: Path) -> None:
    issuer = Issuer()
    dirs = prepare(_pod(PROJECTED), PodDir(tmp_path), PodFacts("127.0.0.2"), issuer.fetch())
    before = os.stat(dirs["tok"] / "token").st_ino
    renewed = refresh(issuer.issued[0], issuer.fetch())
    path = dirs["tok"] / "token"
    assert path.read_text() == "jwt-2"
    assert os.stat(path).st_ino != before  # a rename: a reader never sees half a token
    assert stat.S_IMODE(path.stat().st_mode) == 0o440
    assert renewed.expires_at == 5002.0
    assert sorted(p.name for p in dirs["tok"].iterdir()) == ["token"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_fs_group_owns_volumes_like_the_kubelet(tmp_path: Path) -> None:
    issuer = Issuer()
    dirs = prepare(_pod(PROJECTED, fs_group=4242), PodDir(tmp_path), PodFacts("1"), issuer.fetch())
    token = dirs["tok"] / "token"
    # 0600 first (the kubelet's choice when an fsGroup is set), then group-readable.
    assert stat.S_IMODE(token.stat().st_mode) == 0o640 and token.stat().st_gid == 4242
    assert dirs["tok"].stat().st_mode & stat.S_ISGID
    refresh(issuer.issued[0], issuer.fetch())
    assert stat.S_IMODE(token.stat().st_mode) == 0o640 and token.stat().st_gid == 4242
    empty = prepare(_pod({"name": "e", "emptyDir": {}}, fs_group=4242), PodDir(tmp_path / "b"),
                    PodFacts("1"), issuer.fetch())["e"]  # fmt: skip
    assert stat.S_IMODE(empty.stat().st_mode) == 0o2777 and empty.stat().st_gid == 4242


def test_empty_dirs_are_world_writable_as_the_kubelet_makes_them(tmp_path: Path) -> None:
    dirs = prepare(_pod({"name": "e", "emptyDir": {}}), PodDir(tmp_path), PodFacts("1"),
                   Issuer().fetch())  # fmt: skip
    assert stat.S_IMODE(dirs["e"].stat().st_mode) == 0o777


def test_token_request_is_bound_to_the_pod() -> None:
    pod = {"metadata": {"name": "web-1", "namespace": "ns", "uid": "uid-9"}}
    spec = token_request(pod, ["nest"], 600)["spec"]
    bound = spec["boundObjectRef"]
    assert (bound["kind"], bound["apiVersion"], bound["name"], bound["uid"]) == (
        "Pod", "v1", "web-1", "uid-9")  # fmt: skip
    assert spec["audiences"] == ["nest"] and spec["expirationSeconds"] == 600

"""Volumes become host directories with the right files; mounts honour subPath and readOnly."""

import base64
from pathlib import Path

import pytest

from nest_cluster.errors import RunnerError
from nest_cluster.runner.env import PodFacts
from nest_cluster.runner.layout import PodDir
from nest_cluster.runner.volumes import Fetch, Grant, mounts, prepare

OBJECTS = {
    "cm": {"data": {"a.conf": "A"}, "binaryData": {"b.bin": base64.b64encode(b"\x00").decode()}},
    "tok": {"data": {"token": base64.b64encode(b"jwt").decode()}},
}  # fmt: skip
FETCH = Fetch(
    config_map=lambda n: OBJECTS.get(n) if n == "cm" else None,
    secret=lambda n: OBJECTS.get(n) if n == "tok" else None,
    token=lambda sa, aud, secs: Grant(f"token-for-{sa}", 1e9 + secs),
)
SUB_ITEM = {"key": "a.conf", "path": "sub/a.conf"}
NS_ITEM = {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}
POD = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"x": "1"}},
    "spec": {
        "serviceAccountName": "builder",
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "sa", "secret": {"secretName": "tok"}},
            {"name": "conf", "configMap": {"name": "cm", "items": [SUB_ITEM]}},
            {"name": "info", "downwardAPI": {"items": [
                {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            ]}},
            {"name": "proj", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token"}},
                {"configMap": {"name": "cm"}},
                {"downwardAPI": {"items": [NS_ITEM]}},
            ]}},
        ],
    },
}  # fmt: skip


def test_prepare_writes_every_kind(tmp_path: Path) -> None:
    dirs = prepare(POD, PodDir(tmp_path), PodFacts("127.0.0.2"), FETCH)
    assert dirs["scratch"].is_dir() and not any(dirs["scratch"].iterdir())
    assert (dirs["sa"] / "token").read_text() == "jwt"
    assert (dirs["conf"] / "sub" / "a.conf").read_text() == "A"
    assert (dirs["info"] / "name").read_text() == "p"
    assert (dirs["info"] / "labels").read_text() == 'x="1"'
    assert (dirs["proj"] / "token").read_text() == "token-for-builder"
    assert (dirs["proj"] / "b.bin").read_bytes() == b"\x00"
    assert (dirs["proj"] / "ns").read_text() == "ns"


def test_missing_secret_is_a_clear_error(tmp_path: Path) -> None:
    pod = {**POD, "spec": {"volumes": [{"name": "s", "secret": {"secretName": "gone"}}]}}
    with pytest.raises(RunnerError, match='secret "gone" not found'):
        prepare(pod, PodDir(tmp_path), PodFacts("127.0.0.2"), FETCH)


def test_item_paths_cannot_escape(tmp_path: Path) -> None:
    vol = {"name": "c", "configMap": {"name": "cm", "items": [{"key": "a.conf", "path": "../x"}]}}
    with pytest.raises(RunnerError, match="escapes"):
        prepare({**POD, "spec": {"volumes": [vol]}}, PodDir(tmp_path), PodFacts("1"), FETCH)


def test_mounts_order_subpath_and_read_only(tmp_path: Path) -> None:
    dirs = {"v": tmp_path / "v", "w": tmp_path / "w"}
    container = {
        "volumeMounts": [
            {"name": "w", "mountPath": "/var/run/nest/deep", "readOnly": True},
            {"name": "v", "mountPath": "/var/run/nest", "subPath": "sock"},
        ]
    }
    first, second = mounts(container, dirs)
    assert (first.target, first.source, first.read_only) == (
        "/var/run/nest",
        str(tmp_path / "v" / "sock"),
        False,
    )
    assert (second.target, second.read_only) == ("/var/run/nest/deep", True)
    assert (tmp_path / "v" / "sock").is_dir()
    with pytest.raises(RunnerError, match="escapes"):
        mounts({"volumeMounts": [{"name": "v", "mountPath": "/x", "subPath": "../.."}]}, dirs)
    with pytest.raises(RunnerError, match="no such volume"):
        mounts({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, dirs)

"""The generated CRDs: names, subresources, columns, determinism, and the drift check."""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from crds import constants
from crds.generate import KINDS, crd_manifests, default_dir, first_difference, load, render
from nest import crds_cmd

BY_KIND = {m["spec"]["names"]["kind"]: m for m in crd_manifests()}


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="nest")
    crds_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


@pytest.fixture
def crd_dir(tmp_path: Path) -> Path:
    for path in default_dir().glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_names_short_names_and_category() -> None:
    expected = {
        "Sandbox": ("sandboxes", "sbx"),
        "SandboxReplicaSet": ("sandboxreplicasets", "sbxrs"),
        "SandboxDeployment": ("sandboxdeployments", "sbxd"),
        "SandboxEndpoints": ("sandboxendpoints", "sbxep"),
        "SandboxPool": ("sandboxpools", "sbxpool"),
    }
    for kind, (plural, short) in expected.items():
        manifest = BY_KIND[kind]
        assert manifest["apiVersion"] == "apiextensions.k8s.io/v1"
        assert manifest["metadata"]["name"] == f"{plural}.nest.sandbox.dev"
        names = manifest["spec"]["names"]
        assert (names["plural"], names["shortNames"], names["categories"]) == (
            plural,
            [short],
            ["nest"],
        )
        assert manifest["spec"]["versions"][0]["name"] == constants.VERSION


def test_status_everywhere_and_scale_on_workloads() -> None:
    for kind, manifest in BY_KIND.items():
        subresources = manifest["spec"]["versions"][0]["subresources"]
        assert subresources["status"] == {}
        if kind in ("SandboxReplicaSet", "SandboxDeployment"):
            assert subresources["scale"] == {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            }
        else:
            assert "scale" not in subresources


def _resolve(schema: dict[str, Any], json_path: str) -> dict[str, Any] | None:
    """The schema of a column's field; a filter (`conditions[?(@.type=="Built")]`) selects
    list items, so it resolves to the list's item schema."""
    node: dict[str, Any] | None = schema
    for name in re.sub(r"\[\?\(.*?\)\]", "[]", json_path).lstrip(".").split("."):
        node = (node or {}).get("properties", {}).get(name.removesuffix("[]"))
        if name.endswith("[]"):
            node = (node or {}).get("items")
    return node


@pytest.mark.parametrize("kind", list(BY_KIND))
def test_printer_columns_point_at_fields_of_their_type(kind: str) -> None:
    version = BY_KIND[kind]["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for column in version["additionalPrinterColumns"]:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        field = _resolve(schema, column["jsonPath"])
        assert field is not None, column
        # A list may be a string column: the API server prints it as JSON.
        printable = {field["type"], "string"} if field["type"] == "array" else {field["type"]}
        assert column["type"] in printable, column


def test_only_the_pool_is_cluster_scoped() -> None:
    scopes = {kind: m["spec"]["scope"] for kind, m in BY_KIND.items()}
    assert scopes.pop("SandboxPool") == "Cluster"
    assert set(scopes.values()) == {"Namespaced"}


def test_pool_columns_say_where_what_and_for_whom() -> None:
    columns = BY_KIND["SandboxPool"]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == [
        "Namespace", "Modes", "Tenancy", "Pods", "Ready", "Age",
    ]  # fmt: skip


def test_root_metadata_is_left_to_the_api_server() -> None:
    for manifest in BY_KIND.values():
        root = manifest["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert root["properties"]["metadata"] == {"type": "object"}
        assert root["properties"]["apiVersion"]["type"] == "string"
        assert "enum" not in root["properties"]["kind"]


def test_rendering_is_deterministic_and_free_of_yaml_anchors() -> None:
    first = [render(m) for m in crd_manifests()]
    assert first == [render(m) for m in crd_manifests()]
    for text in first:
        assert "&id" not in text and "*id" not in text
        assert yaml.safe_load(text)["kind"] == "CustomResourceDefinition"


def test_generate_writes_what_is_committed(tmp_path: Path) -> None:
    assert run("crds", "generate", "--dir", str(tmp_path)) == 0
    for kind in KINDS:
        name = f"{kind.plural}.yaml"
        assert (tmp_path / name).read_text() == (default_dir() / name).read_text()
    assert load(tmp_path) == crd_manifests()


def test_committed_yaml_matches_the_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("crds", "check") == 0
    assert "match" in capsys.readouterr().out


def test_a_hand_edit_is_drift(crd_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = crd_dir / "sandboxes.yaml"
    text = path.read_text()
    assert "default: 64Mi" in text
    path.write_text(text.replace("default: 64Mi", "default: 128Mi"))
    assert run("crds", "check", "--dir", str(crd_dir)) == 1
    err = capsys.readouterr().err
    assert "sandboxes.yaml" in err and "resources.properties.memory.default" in err


def test_a_kustomization_missing_a_crd_is_drift(
    crd_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = crd_dir / "kustomization.yaml"
    path.write_text(path.read_text().replace("- sandboxendpoints.yaml\n", ""))
    assert run("crds", "check", "--dir", str(crd_dir)) == 1
    assert "kustomization.yaml: does not list exactly the generated CRDs" in capsys.readouterr().err


def test_formatting_and_comments_are_not_drift(crd_dir: Path) -> None:
    path = crd_dir / "sandboxdeployments.yaml"
    data = yaml.safe_load(path.read_text())
    path.write_text("# reformatted\n" + yaml.safe_dump(data, sort_keys=True, width=60))
    assert run("crds", "check", "--dir", str(crd_dir)) == 0


def test_missing_and_stale_files_are_drift(
    crd_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (crd_dir / "sandboxendpoints.yaml").rename(crd_dir / "sandboxaddresses.yaml")
    assert run("crds", "check", "--dir", str(crd_dir)) == 1
    err = capsys.readouterr().err
    assert "sandboxendpoints.yaml: missing" in err
    assert "sandboxaddresses.yaml: stale" in err


def test_unparsable_yaml_is_reported_not_raised(
    crd_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (crd_dir / "sandboxes.yaml").write_text("spec: [unclosed\n")
    assert run("crds", "check", "--dir", str(crd_dir)) == 1
    assert "not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("a", "b", "where"),
    [
        ({"x": {"y": 1}}, {"x": {"y": 2}}, ".x.y"),
        ({"x": 1}, {"x": 1, "z": 0}, ".z"),
        ({"x": [1, 2]}, {"x": [1]}, ".x (length 1, expected 2)"),
        ({"x": True}, {"x": 1}, ".x"),
        ({"x": [{"a": 1}]}, {"x": [{"a": 1}]}, None),
    ],
)
def test_first_difference(a: Any, b: Any, where: str | None) -> None:
    assert first_difference(a, b) == where


@pytest.mark.parametrize("command", ["generate", "check"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run("crds", command, "--help")
    assert exited.value.code == 0
    assert "--dir" in capsys.readouterr().out

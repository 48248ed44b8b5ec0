"""The registry a cluster announces (KEP-1755) and the Docker-config credentials for it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from sandbox.hosting import (
    DOCKER_CONFIG_ENV,
    HOSTING_KEY,
    RegistryHosting,
    docker_config_credentials,
    parse_hosting,
)
from sandbox.layers import Credentials, PackageError


def test_the_announcement_names_where_to_push_and_where_pods_pull() -> None:
    data = {HOSTING_KEY: "host: localhost:5001\nhostFromClusterNetwork: kind-registry:5000\n"}
    found = parse_hosting(data)
    assert found == RegistryHosting("localhost:5001", "kind-registry:5000")
    assert found is not None and found.pull_host == "kind-registry:5000"
    only_host = parse_hosting({HOSTING_KEY: "host: 127.0.0.1:5000\n"})
    assert only_host is not None and only_host.pull_host == "127.0.0.1:5000"


@pytest.mark.parametrize("text", ["", "[unclosed", "- a list\n", "help: no host\n", "host: 5\n"])
def test_an_announcement_without_a_host_announces_nothing(text: str) -> None:
    assert parse_hosting({HOSTING_KEY: text}) is None
    assert parse_hosting(None) is None


def _config(directory: Path, name: str, auths: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(json.dumps({"auths": auths}))
    return directory


def test_credentials_come_from_the_docker_config_directory(tmp_path: Path) -> None:
    auth = base64.b64encode(b"builder:s3cret").decode()
    docker = _config(tmp_path / "docker", "config.json", {"reg.example:5000": {"auth": auth}})
    env = {DOCKER_CONFIG_ENV: str(docker)}
    assert docker_config_credentials("reg.example:5000", env=env) == Credentials(
        "builder", "s3cret"
    )
    assert docker_config_credentials("other.example", env=env) is None  # anonymous there
    assert docker_config_credentials("reg.example:5000", env={}) is None


def test_a_mounted_dockerconfigjson_secret_is_read_as_is(tmp_path: Path) -> None:
    # A Secret volume names the file after the Secret's key.
    secret = _config(
        tmp_path / "secret", ".dockerconfigjson", {"r:1": {"username": "u", "password": "p"}}
    )
    assert docker_config_credentials("r:1", secret) == Credentials("u", "p")


def test_a_config_that_is_not_json_is_an_error_not_anonymous_access(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(PackageError, match="not valid"):
        docker_config_credentials("r:1", tmp_path)

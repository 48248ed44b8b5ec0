"""The local registry's configuration and the KEP-1755 announcement of its address."""

from __future__ import annotations

from pathlib import Path

from nest_cluster.registry import (
    HOSTING_KEY,
    RegistryHosting,
    config,
    hosting_configmap,
    parse_hosting,
    recorded_port,
)


def test_the_registry_listens_on_loopback_and_stores_under_the_state(tmp_path: Path) -> None:
    doc = config(tmp_path / "registry", 5123, "s")
    assert doc["http"]["addr"] == "127.0.0.1:5123"
    assert doc["storage"]["filesystem"]["rootdirectory"] == str(tmp_path / "registry" / "data")
    assert doc["http"]["secret"] == "s"
    assert "auth" not in doc  # loopback only; pulls are verified by digest


def test_the_announced_address_round_trips() -> None:
    cm = hosting_configmap(RegistryHosting("127.0.0.1:5123", "127.0.0.1:5123"))
    assert (cm["metadata"]["namespace"], cm["metadata"]["name"]) == (
        "kube-public", "local-registry-hosting",
    )  # fmt: skip
    found = parse_hosting(cm["data"])
    assert found == RegistryHosting("127.0.0.1:5123", "127.0.0.1:5123")


def test_kind_style_announcements_pull_from_the_cluster_network_name() -> None:
    kind = {HOSTING_KEY: 'host: "localhost:5001"\nhostFromClusterNetwork: "kind-registry:5000"\n'}
    found = parse_hosting(kind)
    assert found is not None and found.host == "localhost:5001"
    assert found.pull_host == "kind-registry:5000"
    only_host = parse_hosting({HOSTING_KEY: "host: reg:1\n"})
    assert only_host is not None and only_host.pull_host == "reg:1"


def test_no_or_garbled_announcement_is_none() -> None:
    assert parse_hosting(None) is None
    assert parse_hosting({}) is None
    assert parse_hosting({HOSTING_KEY: "[unclosed"}) is None
    assert parse_hosting({HOSTING_KEY: "help: nothing else\n"}) is None


def test_the_recorded_port_is_read_only_when_valid() -> None:
    assert recorded_port({"registry": {"port": 5123}}) == 5123
    assert recorded_port({"ports": {"apiserver": 1}}) is None  # a state from before the registry
    assert recorded_port({"registry": {"port": "5123"}}) is None
    assert recorded_port({"registry": {"port": 0}}) is None

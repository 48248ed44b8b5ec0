"""The client factory: which credentials a process uses, and a rotated token is picked up."""

from __future__ import annotations

from pathlib import Path

import pytest

from nest_kube.config import ConfigError, Source, TokenFile, choose_source, connect

SA = Path("/sa")
POD_ENV = {"KUBERNETES_SERVICE_HOST": "127.0.0.10", "KUBERNETES_SERVICE_PORT": "443"}


def choose(**kw: object) -> Source:
    args: dict[str, object] = {
        "kubeconfig": None,
        "context": None,
        "token": None,
        "env": {},
        "service_account_dir": SA,
        "exists": {},
    }
    args.update(kw)
    return choose_source(**args)  # type: ignore[arg-type]


def test_the_order_is_token_then_named_kubeconfig_then_pod_then_kubeconfig_env() -> None:
    pod = {SA / "token": True}
    assert choose(token="t", kubeconfig="k", env=POD_ENV, exists=pod).kind == "token"
    assert choose(kubeconfig="k", context="c", env=POD_ENV, exists=pod) == Source(
        "kubeconfig", Path("k"), "c"
    )
    assert choose(env={**POD_ENV, "KUBECONFIG": "/k"}, exists={**pod, Path("/k"): True}) == Source(
        "in-cluster", SA
    )
    off_pod = {"KUBECONFIG": "/missing:/k"}
    assert choose(env=off_pod, exists={Path("/k"): True}).path == Path("/k")
    with pytest.raises(ConfigError, match="no Kubernetes credentials"):
        choose(env=POD_ENV)  # in a pod's env but no token mounted, and no kubeconfig


def test_a_rotated_token_file_is_read_again_once_due(tmp_path: Path) -> None:
    now = [0.0]
    token = tmp_path / "token"
    token.write_text("first\n")
    tokens = TokenFile(token, period=60, clock=lambda: now[0])
    token.write_text("second")
    assert tokens.token() == "first"  # not due yet
    now[0] = 61
    assert tokens.token() == "second"
    token.unlink()  # mid-rotation: keep what we had
    now[0] = 200
    assert tokens.token() == "second"


def test_in_cluster_connection_sends_the_service_account_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("not parsed until a TLS connection is made")
    connection = connect(
        env={**POD_ENV, "KUBERNETES_SERVICE_HOST": "fd00::1"}, service_account_dir=tmp_path
    )
    assert connection.source.kind == "in-cluster"
    assert connection.configuration.ssl_ca_cert == str(tmp_path / "ca.crt")
    assert connection.host == "https://[fd00::1]:443"
    assert connection.authorization() == "Bearer sa-token"
    client = connection.api_client(pool_size=7)
    assert client.configuration.connection_pool_maxsize == 7
    assert connection.configuration.connection_pool_maxsize != 7  # the copy is its own


def test_a_kubeconfig_and_an_explicit_token(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: abc}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    connection = connect(kubeconfig, env={})
    assert connection.host == "https://127.0.0.1:6443"
    assert connection.authorization() == "Bearer abc"
    explicit = connect(token="xyz", host="http://127.0.0.1:1", env={})
    assert explicit.authorization() == "Bearer xyz"
    with pytest.raises(ConfigError):
        connect(token="xyz", env={})  # a token needs a host
    with pytest.raises(ConfigError):
        connect(tmp_path / "absent", env={})

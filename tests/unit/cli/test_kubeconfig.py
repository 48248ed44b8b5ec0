"""The light kubeconfig loader reads what the kubernetes client reads, and says what it cannot.

The `nest` command authenticates with it on every request, so a rule read differently here
(which credential wins, where a relative path points, what an exec plugin is given) would be a
command that works with kubectl and fails, or acts as someone else, with nest.
"""

from __future__ import annotations

import base64
import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nest import kubeconfig as kc
from nest.errors import NestError

SERVER = "https://127.0.0.1:6443"


def config(
    user: dict[str, Any] | None = None, cluster: dict[str, Any] | None = None, **context: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": SERVER, **(cluster or {})}}],
        "users": [{"name": "u", "user": user or {}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u", **context}}],
        "current-context": "ctx",
    }


def write(tmp_path: Path, doc: dict[str, Any], as_json: bool = False) -> Path:
    path = tmp_path / "kube" / "config"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(doc) if as_json else yaml.safe_dump(doc))
    return path


def creds(tmp_path: Path, doc: dict[str, Any], env: dict[str, str] | None = None) -> kc.Credentials:
    path = write(tmp_path, doc)
    return kc.credentials(kc.load(path), path, env or {"PATH": "/usr/bin:/bin"})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("as_json", [False, True])
def test_the_current_contexts_namespace_else_default(tmp_path: Path, as_json: bool) -> None:
    path = write(tmp_path, config(namespace="team"), as_json)
    assert kc.context_namespace(kc.load(path), path) == "team"
    path = write(tmp_path, config(), as_json)
    assert kc.context_namespace(kc.load(path), path) == "default"


def test_a_token_wins_over_a_token_file_and_the_server_loses_its_slash(tmp_path: Path) -> None:
    (tmp_path / "kube" / "token").parent.mkdir()
    (tmp_path / "kube" / "token").write_text("from-file\n")
    found = creds(tmp_path, config({"token": "inline", "tokenFile": "token"}))
    assert (found.server, found.token) == (SERVER, "inline")
    # tokenFile is relative to the kubeconfig's directory, as kubectl reads it.
    assert creds(tmp_path, config({"tokenFile": "token"})).token == "from-file"
    with pytest.raises(NestError, match="tokenFile"):
        creds(tmp_path, config({"tokenFile": "missing"}))
    assert creds(tmp_path, config(cluster={"server": SERVER + "/"})).server == SERVER


def test_files_are_relative_to_the_kubeconfig_and_data_is_base64(tmp_path: Path) -> None:
    files = config(
        {"client-certificate": "u.crt", "client-key": "/abs/u.key"},
        {"certificate-authority": "ca.crt"},
    )
    found = creds(tmp_path, files)
    base = (tmp_path / "kube").resolve()
    assert (found.ca_file, found.cert_file, found.key_file) == (
        str(base / "ca.crt"),
        str(base / "u.crt"),
        "/abs/u.key",
    )
    inline = config(
        {"client-certificate-data": b64(b"CERT"), "client-key-data": b64(b"KEY")},
        {"certificate-authority-data": b64(b"CA PEM"), "certificate-authority": "ignored"},
    )
    found = creds(tmp_path, inline)
    assert (found.ca_data, found.ca_file) == ("CA PEM", None)
    assert (found.cert_data, found.key_data, found.cert_file) == (b"CERT", b"KEY", None)
    assert found.token is None
    with pytest.raises(NestError, match="not base64"):
        creds(tmp_path, config({"client-key-data": "not base64!"}))


def test_basic_auth_and_insecure_skip_verify(tmp_path: Path) -> None:
    found = creds(
        tmp_path, config({"username": "a", "password": "b"}, {"insecure-skip-tls-verify": True})
    )
    assert (found.username, found.password, found.insecure, found.token) == ("a", "b", True, None)


@pytest.mark.parametrize(
    ("user", "cluster"),
    [
        ({"auth-provider": {"name": "oidc", "config": {}}}, {}),
        ({"token": "t"}, {"proxy-url": "http://127.0.0.1:3128"}),
        ({"token": "t"}, {"tls-server-name": "kubernetes"}),
    ],
)
def test_what_the_loader_does_not_implement_is_unsupported_not_guessed(
    tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any]
) -> None:
    with pytest.raises(kc.Unsupported):
        creds(tmp_path, config(user, cluster))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({**config(), "current-context": ""}, "no current-context"),
        ({**config(), "current-context": "other"}, "no context named 'other'"),
        ({**config(), "users": []}, "no user named 'u'"),
        (config(cluster={"server": "127.0.0.1:6443"}), "no http"),
    ],
)
def test_a_broken_kubeconfig_is_one_error_naming_the_file(
    tmp_path: Path, doc: dict[str, Any], message: str
) -> None:
    with pytest.raises(NestError, match=message) as err:
        creds(tmp_path, doc)
    assert str(tmp_path) in str(err.value)


def test_a_file_that_is_no_kubeconfig_says_so(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("- a list\n")
    with pytest.raises(NestError, match="not a kubeconfig"):
        kc.load(path)
    path.write_text("{not json")
    with pytest.raises(NestError, match="not a kubeconfig"):
        kc.load(path)
    with pytest.raises(NestError, match="No such file"):
        kc.load(tmp_path / "missing")


def plugin(tmp_path: Path, status: dict[str, Any], version: str = "v1", code: int = 0) -> Path:
    """An exec credential plugin that records what it was given and prints `status`."""
    script = tmp_path / "kube" / "bin" / "plugin"
    script.parent.mkdir(parents=True, exist_ok=True)
    answer = {"apiVersion": version, "kind": "ExecCredential", "status": status}
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"open({str(tmp_path / 'seen.json')!r}, 'w').write(json.dumps("
        "{'argv': sys.argv[1:], 'info': os.environ['KUBERNETES_EXEC_INFO'], "
        "'extra': os.environ.get('EXTRA')}))\n"
        "sys.stderr.write('plugin says no')\n"
        f"print({json.dumps(answer)!r})\n"
        f"sys.exit({code})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def exec_user(version: str = "client.authentication.k8s.io/v1", **more: Any) -> dict[str, Any]:
    return {
        "exec": {
            "apiVersion": version,
            "command": "./bin/plugin",  # relative to the kubeconfig, as kubectl resolves it
            "args": ["--flag", "x"],
            "env": [{"name": "EXTRA", "value": "1"}],
            **more,
        }
    }


def test_an_exec_plugin_token_with_the_exec_info_and_env_it_expects(tmp_path: Path) -> None:
    version = "client.authentication.k8s.io/v1"
    plugin(tmp_path, {"token": "exec-token"}, version)
    found = creds(tmp_path, config(exec_user(version, provideClusterInfo=True)))
    assert found.token == "exec-token"
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["argv"] == ["--flag", "x"] and seen["extra"] == "1"
    info = json.loads(seen["info"])
    assert (info["apiVersion"], info["kind"]) == (version, "ExecCredential")
    assert info["spec"]["cluster"]["server"] == SERVER


def test_an_exec_plugin_certificate_replaces_the_users_files(tmp_path: Path) -> None:
    version = "client.authentication.k8s.io/v1beta1"
    plugin(tmp_path, {"clientCertificateData": "CERT PEM", "clientKeyData": "KEY PEM"}, version)
    doc = config({**exec_user(version), "client-certificate": "u.crt", "client-key": "u.key"})
    found = creds(tmp_path, doc)
    assert (found.cert_data, found.key_data, found.token) == (b"CERT PEM", b"KEY PEM", None)
    assert (found.cert_file, found.key_file) == (None, None)


def test_a_static_token_wins_over_the_exec_plugin(tmp_path: Path) -> None:
    plugin(tmp_path, {"token": "exec-token"}, "client.authentication.k8s.io/v1")
    assert creds(tmp_path, config({**exec_user(), "token": "static"})).token == "static"
    assert not (tmp_path / "seen.json").exists()


@pytest.mark.parametrize(
    ("status", "version", "code", "message"),
    [
        ({"token": "t"}, "client.authentication.k8s.io/v1", 3, "exited 3: plugin says no"),
        ({"token": "t"}, "client.authentication.k8s.io/v1alpha1", 0, "does not match"),
        ({"expirationTimestamp": "x"}, "client.authentication.k8s.io/v1", 0, "neither a token"),
    ],
)
def test_a_failing_exec_plugin_is_an_error_not_an_anonymous_request(
    tmp_path: Path, status: dict[str, Any], version: str, code: int, message: str
) -> None:
    plugin(tmp_path, status, version, code)
    with pytest.raises(NestError, match=message):
        creds(tmp_path, config(exec_user()))


def test_a_missing_exec_plugin_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(NestError, match="exec plugin"):
        creds(tmp_path, config(exec_user()))

"""A small kubeconfig loader: the current context's server, CA, credentials and namespace.

Why: the kubernetes client costs about a second of imports before its first request, more than
the command's work (issue 14: `nest get functions` 1.4 s against `kubectl get` 0.07 s). Most
kubeconfigs need no more than kubectl's simplest rules to be read: a server, a CA, and a token,
a client certificate, basic auth or an exec plugin (client.authentication.k8s.io). What this
loader does not implement (auth-provider plugins, proxy-url, tls-server-name) it reports as
`Unsupported`, and the caller falls back to the kubernetes client, which does; it never guesses.

The rules follow the kubernetes client's (kubernetes.config.kube_config), so both paths
authenticate the same way: a `token` wins over `tokenFile`, and both over an exec plugin, which
wins over username/password; file paths are relative to the kubeconfig's directory.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from nest.errors import NestError

Config = dict[str, Any]
# Keys of the cluster and user entries the light path does not implement.
UNSUPPORTED_CLUSTER_KEYS = ("proxy-url", "tls-server-name")
UNSUPPORTED_USER_KEYS = ("auth-provider",)


class Unsupported(Exception):
    """The light path cannot serve this kubeconfig; the kubernetes client can (its reason)."""


class Credentials(NamedTuple):  # not a dataclass: `dataclasses` imports `inspect`, 8 ms
    """How to reach and authenticate to the API server of the current context."""

    server: str
    ca_file: str | None = None
    ca_data: str | None = None  # PEM text
    insecure: bool = False
    token: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: bytes | None = None  # PEM, from -data keys or an exec plugin
    key_data: bytes | None = None
    username: str | None = None
    password: str | None = None


def load(path: Path) -> Config:
    """The kubeconfig as a mapping; JSON is read without YAML (a JSON kubeconfig is YAML too)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise NestError(f"{path}: {exc.strerror or exc}") from exc
    try:
        loaded: object = json.loads(text) if text.lstrip().startswith("{") else _yaml(text)
    except ValueError as exc:
        raise NestError(f"{path}: not a kubeconfig ({exc})") from exc
    if not isinstance(loaded, dict):
        raise NestError(f"{path}: not a kubeconfig (expected a mapping)")
    return loaded


def _yaml(text: str) -> object:
    import yaml  # only when the kubeconfig is YAML, which most are

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)  # a safe loader (C when built)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from exc


def _named(config: Config, section: str, name: object, path: Path) -> dict[str, Any]:
    """The `section` entry called `name` (clusters[].cluster, users[].user, contexts[].context)."""
    key = section.removesuffix("s")
    for entry in config.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(key) or {}
            if not isinstance(value, dict):
                raise NestError(f"{path}: {section} entry {name!r} is not a mapping")
            return value
    raise NestError(f"{path}: no {key} named {name!r} in {section}")


def current_context(config: Config, path: Path) -> dict[str, Any]:
    name = config.get("current-context")
    if not name:
        raise NestError(f"{path}: no current-context")
    return _named(config, "contexts", name, path)


def context_namespace(config: Config, path: Path) -> str:
    """The current context's namespace, as kubectl would use it; `default` when unset."""
    namespace = current_context(config, path).get("namespace")
    return str(namespace) if namespace else "default"


def _file(base: Path, value: object) -> str:
    return str(base / str(value))  # an absolute value stays itself


def _data(entry: Mapping[str, Any], key: str, path: Path) -> bytes | None:
    value = entry.get(key)
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError as exc:
        raise NestError(f"{path}: {key} is not base64 ({exc})") from exc


def credentials(config: Config, path: Path, env: Mapping[str, str] | None = None) -> Credentials:
    """The current context's server and credentials, or Unsupported (use the kubernetes client).

    Runs the user's exec plugin, if that is how it authenticates, as the kubernetes client does
    for every command (ExecCredential; neither caches credentials between processes).
    """
    context = current_context(config, path)
    cluster = _named(config, "clusters", context.get("cluster"), path)
    user = _named(config, "users", context.get("user"), path) if context.get("user") else {}
    for key in UNSUPPORTED_CLUSTER_KEYS:
        if key in cluster:
            raise Unsupported(f"cluster {key}")
    for key in UNSUPPORTED_USER_KEYS:
        if key in user:
            raise Unsupported(f"user {key}")
    server = str(cluster.get("server") or "").rstrip("/")
    if not server.startswith(("https://", "http://")):
        raise NestError(f"{path}: the cluster's server {server!r} is no http(s) URL")
    base = path.resolve().parent
    ca = cluster.get("certificate-authority")
    ca_data = _data(cluster, "certificate-authority-data", path)
    found: dict[str, Any] = {
        "server": server,
        "ca_file": _file(base, ca) if ca and ca_data is None else None,
        "ca_data": ca_data.decode() if ca_data is not None else None,
        "insecure": bool(cluster.get("insecure-skip-tls-verify")),
        "cert_data": _data(user, "client-certificate-data", path),
        "key_data": _data(user, "client-key-data", path),
    }
    if found["cert_data"] is None and user.get("client-certificate"):
        found["cert_file"] = _file(base, user["client-certificate"])
    if found["key_data"] is None and user.get("client-key"):
        found["key_file"] = _file(base, user["client-key"])
    if user.get("token"):
        found["token"] = str(user["token"])
    elif user.get("tokenFile"):
        found["token"] = _read_token(_file(base, user["tokenFile"]), path)
    elif user.get("exec"):
        status = run_exec(user["exec"], cluster, base, path, os.environ if env is None else env)
        if status.get("token"):
            found["token"] = str(status["token"])
        else:
            found["cert_data"] = str(status["clientCertificateData"]).encode()
            found["key_data"] = str(status["clientKeyData"]).encode()
            found["cert_file"] = found["key_file"] = None
    elif "username" in user and "password" in user:
        found["username"], found["password"] = str(user["username"]), str(user["password"])
    return Credentials(**found)


def _read_token(file: str, path: Path) -> str:
    try:
        return Path(file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise NestError(f"{path}: tokenFile {file}: {exc.strerror or exc}") from exc


def run_exec(
    spec: Mapping[str, Any],
    cluster: Mapping[str, Any],
    base: Path,
    path: Path,
    env: Mapping[str, str],
) -> dict[str, Any]:
    """Run an exec credential plugin; its ExecCredential's status (a token, or a certificate and
    key). The plugin sees KUBERNETES_EXEC_INFO as kubectl and the kubernetes client set it."""
    import subprocess  # only for exec plugins: most kubeconfigs carry a token or a certificate

    command, version = spec.get("command"), spec.get("apiVersion")
    if not command or not version:
        raise NestError(f"{path}: exec needs command and apiVersion")
    interactive = sys.stdout.isatty()
    info: dict[str, Any] = {
        "apiVersion": version,
        "kind": "ExecCredential",
        "spec": {"interactive": interactive},
    }
    if spec.get("provideClusterInfo"):
        info["spec"]["cluster"] = dict(cluster)
    environ = {**env, **{str(e["name"]): str(e["value"]) for e in spec.get("env") or []}}
    environ["KUBERNETES_EXEC_INFO"] = json.dumps(info)
    argv = [str(command), *(str(a) for a in spec.get("args") or [])]
    # A bare command name is looked up on PATH; a path with a slash is the kubeconfig's.
    if "/" in argv[0]:
        argv[0] = _file(base, argv[0])
    try:
        proc = subprocess.run(
            argv,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=None if interactive else subprocess.PIPE,
            stdin=None if interactive else subprocess.DEVNULL,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise NestError(f"{path}: exec plugin {argv[0]}: {exc.strerror or exc}") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or "").strip()
        raise NestError(
            f"{path}: exec plugin {argv[0]} exited {proc.returncode}"
            + (f": {detail}" if detail else "")
        )
    try:
        answer = json.loads(proc.stdout)
        status = answer["status"]
    except (ValueError, KeyError, TypeError) as exc:
        raise NestError(f"{path}: exec plugin {argv[0]} printed no ExecCredential") from exc
    if answer.get("apiVersion") != version:
        raise NestError(
            f"{path}: exec plugin api version {answer.get('apiVersion')} does not match {version}"
        )
    if not isinstance(status, dict) or not (
        status.get("token") or (status.get("clientCertificateData") and status.get("clientKeyData"))
    ):
        raise NestError(f"{path}: exec plugin {argv[0]} returned neither a token nor a certificate")
    return status

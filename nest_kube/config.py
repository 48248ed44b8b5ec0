"""The one place that decides how a Nest process reaches its API server, and with what identity.

Before this module, kubeconfig loading was written four times, with four different orders. Now
`connect()` picks a source by one rule (`choose_source`, pure) and returns a `Connection` that
every client is made from: the kubernetes library's synchronous `ApiClient` (for code that still
uses it) and the aiohttp settings (`ssl_context`, `authorization`) that `HttpApi` uses.

The rule, first match wins:
1. an explicit bearer token (with the server's URL): a test, or a tool handed a token;
2. an explicit kubeconfig path (`--kubeconfig`), optionally one of its contexts;
3. in a pod: the service account (KUBERNETES_SERVICE_HOST/PORT and the mounted token + CA);
4. $KUBECONFIG, else ~/.kube/config (a developer's machine).

In-cluster, the token file is re-read (at most once a minute, as client-go's cached file token
source does) every time a header is made, because projected service-account tokens are rotated
on disk by the kubelet (and by the local runner) well before they expire; a process that read
its token once would start failing an hour or so after start. Kubeconfig credentials that
refresh (exec plugins, OIDC) refresh through the same hook, so both clients stay valid.
"""

from __future__ import annotations

import copy
import logging
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kubernetes import client, config

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = Path("~/.kube/config")

SourceKind = Literal["token", "kubeconfig", "in-cluster"]
TOKEN_REREAD_SECONDS = 60.0


class ConfigError(Exception):
    """No usable credentials: the message says which sources were tried."""


@dataclass(frozen=True)
class Source:
    """Where the credentials come from; `path` is a kubeconfig or the service-account dir."""

    kind: SourceKind
    path: Path | None = None
    context: str | None = None


def choose_source(
    *,
    kubeconfig: str | Path | None,
    context: str | None,
    token: str | None,
    env: Mapping[str, str],
    service_account_dir: Path,
    exists: Mapping[Path, bool],
) -> Source:
    """The source by the module's rule; `exists` says which candidate files are there."""
    if token:
        return Source("token")
    if kubeconfig:
        return Source("kubeconfig", Path(kubeconfig), context)
    in_pod = env.get("KUBERNETES_SERVICE_HOST") and env.get("KUBERNETES_SERVICE_PORT")
    if in_pod and exists.get(service_account_dir / "token"):
        return Source("in-cluster", service_account_dir)
    named = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    for candidate in [Path(p) for p in named] or [DEFAULT_KUBECONFIG.expanduser()]:
        if exists.get(candidate):
            return Source("kubeconfig", candidate, context)
    tried = ", ".join(str(p) for p in named) or str(DEFAULT_KUBECONFIG)
    raise ConfigError(
        f"no Kubernetes credentials: not in a pod (no service account at {service_account_dir})"
        f" and no kubeconfig at {tried}"
    )


def _candidates(env: Mapping[str, str], service_account_dir: Path) -> dict[Path, bool]:
    named = [Path(p) for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    paths = [service_account_dir / "token", DEFAULT_KUBECONFIG.expanduser(), *named]
    return {p: p.is_file() for p in paths}


class TokenFile:
    """A token file read again once `period` has passed, so a rotated token is picked up."""

    def __init__(
        self, path: Path, period: float = TOKEN_REREAD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.path, self.period, self.clock = path, period, clock
        self._token = self._read()
        self._due = clock() + period

    def _read(self) -> str:
        token = self.path.read_text().strip()
        if not token:
            raise ConfigError(f"service-account token file {self.path} is empty")
        return token

    def token(self) -> str:
        if self.clock() >= self._due:
            self._due = self.clock() + self.period
            try:
                self._token = self._read()
            except (OSError, ConfigError) as exc:  # mid-rotation: the old token is still valid
                log.warning("re-reading %s failed (%s); keeping the previous token", self.path, exc)
        return self._token


def _in_cluster(configuration: client.Configuration, env: Mapping[str, str], where: Path) -> None:
    host, port = env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]
    configuration.host = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    if not (where / "ca.crt").is_file():
        raise ConfigError(f"no CA certificate at {where / 'ca.crt'}")
    configuration.ssl_ca_cert = str(where / "ca.crt")
    tokens = TokenFile(where / "token")
    configuration.api_key["BearerToken"] = tokens.token()
    configuration.api_key_prefix["BearerToken"] = "Bearer"

    def refresh(cfg: client.Configuration) -> None:
        cfg.api_key["BearerToken"] = tokens.token()

    setattr(configuration, "refresh_api_key_hook", refresh)  # noqa: B010 (typed as None)


class Connection:
    """One API server and one identity; every client of a process is made from it."""

    def __init__(self, configuration: client.Configuration, source: Source) -> None:
        self.configuration = configuration
        self.source = source

    @property
    def host(self) -> str:
        return str(self.configuration.host).rstrip("/")

    def authorization(self) -> str | None:
        """The Authorization header value, refreshed (re-read token file, exec plugin) as due."""
        value = self.configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        if not value:
            return None
        value = str(value)
        # Kubeconfig loaders store the value with or without its "Bearer " prefix.
        scheme, _, rest = value.partition(" ")
        return f"Bearer {rest}" if scheme.lower() == "bearer" and rest else f"Bearer {value}"

    def ssl_context(self) -> ssl.SSLContext:
        """TLS towards the API server: its CA, the client certificate if the identity is one."""
        cfg = self.configuration
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file or None)
        if not cfg.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    @property
    def server_hostname(self) -> str | None:
        """The name to verify the server's certificate against, when the kubeconfig sets one."""
        return getattr(self.configuration, "tls_server_name", None) or None

    def api_client(self, pool_size: int | None = None) -> client.ApiClient:
        """A synchronous kubernetes-library client on this connection (its own pool)."""
        # A copy: a pool size set for one client must not leak into another.
        configuration = copy.deepcopy(self.configuration)
        if pool_size is not None:
            configuration.connection_pool_maxsize = pool_size
        return client.ApiClient(configuration)


def connect(
    kubeconfig: str | Path | None = None,
    *,
    context: str | None = None,
    token: str | None = None,
    host: str | None = None,
    ca_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> Connection:
    """The Connection of this process, by the module's rule; raises ConfigError."""
    environ = os.environ if env is None else env
    source = choose_source(
        kubeconfig=kubeconfig, context=context, token=token, env=environ,
        service_account_dir=service_account_dir,
        exists=_candidates(environ, service_account_dir),
    )  # fmt: skip
    configuration = client.Configuration()
    try:
        if source.kind == "token":
            if not host:
                raise ConfigError("a bearer token needs the API server's URL (host)")
            assert token is not None
            configuration.host = host
            configuration.api_key["BearerToken"] = token
            configuration.api_key_prefix["BearerToken"] = "Bearer"
            configuration.ssl_ca_cert = str(ca_file) if ca_file else None
        elif source.kind == "in-cluster":
            assert source.path is not None
            _in_cluster(configuration, environ, source.path)
        else:
            config.load_kube_config(
                config_file=str(source.path), context=source.context,
                client_configuration=configuration,
            )  # fmt: skip
    except config.ConfigException as exc:
        raise ConfigError(f"{source.kind} credentials ({source.path or host}): {exc}") from exc
    return Connection(configuration, source)

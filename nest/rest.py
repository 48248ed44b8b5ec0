"""The `nest` command's HTTP(S) requests to the API server: one light client, one fallback.

Why: a function command makes one to five plain REST calls (GET a list, a PATCH of the scale
subresource, ...). http.client over an ssl context built from the kubeconfig does that for a
few milliseconds of imports, where the kubernetes client costs about a second before its first
request. One keep-alive connection serves all of a command's calls. Kubeconfigs the light
loader does not implement go through `ViaClient`, the kubernetes client's own transport, with
the same interface, so `nest.kube.Cluster` has one code path for both.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode, urlsplit

from nest.errors import NestError
from nest.kubeconfig import Credentials

# http.client and ssl (40 ms of imports) load with the first request: `nest --help` makes none.
if TYPE_CHECKING:
    import http.client
    import ssl

Query = Sequence[tuple[str, str]]
TIMEOUT_S = 60.0  # a stuck API server ends the command instead of hanging it
# What may be sent again when a kept-alive connection was closed before its answer: the server
# may have acted on the first one (RFC 9110 §9.2.2; the gateway's rule, gateway/retry.py).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
USER_AGENT = "nest/0.1"


class HttpError(Exception):
    """A non-2xx answer; the attributes of kubernetes' ApiException (nest.kube.api_error)."""

    def __init__(self, status: int, reason: str, body: bytes) -> None:
        super().__init__(f"HTTP {status} {reason}")
        self.status, self.reason = status, reason
        self.body = body.decode("utf-8", "replace")


class Transport(Protocol):
    def request(
        self,
        method: str,
        path: str,
        query: Query = (),
        body: object = None,
        content_type: str = "application/json",
    ) -> bytes:
        """The answer's body; raises HttpError for a non-2xx status, NestError when the API
        server cannot be reached."""
        ...


def ssl_context(creds: Credentials) -> ssl.SSLContext:
    """Verify the server with the kubeconfig's CA (the system's without one) and present its
    client certificate, if any."""
    import ssl
    import tempfile

    context = ssl.create_default_context(cafile=creds.ca_file, cadata=creds.ca_data)
    if creds.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if creds.cert_data is not None or creds.key_data is not None:
        # ssl loads a certificate chain only from files: a private directory, gone at once.
        with tempfile.TemporaryDirectory(prefix="nest-tls-") as tmp:
            cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            for file, data, name in (
                (cert, creds.cert_data, creds.cert_file),
                (key, creds.key_data, creds.key_file),
            ):
                file.write_bytes(data if data is not None else Path(str(name)).read_bytes())
                os.chmod(file, 0o600)
            context.load_cert_chain(str(cert), str(key))
    elif creds.cert_file:
        context.load_cert_chain(creds.cert_file, creds.key_file)
    return context


def auth_headers(creds: Credentials) -> dict[str, str]:
    if creds.token:
        return {"Authorization": f"Bearer {creds.token}"}
    if creds.username is not None and creds.password is not None:
        pair = f"{creds.username}:{creds.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    return {}


class Light:
    """Requests over one http.client connection to the kubeconfig's server."""

    def __init__(self, creds: Credentials) -> None:
        self.creds = creds
        parts = urlsplit(creds.server)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname or "localhost", parts.port
        self.prefix = parts.path.rstrip("/")  # a server behind a path (a proxy)
        self.headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        self.headers.update(auth_headers(creds))
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        import http.client

        if self._conn is None:
            if self.https:
                context = ssl_context(self.creds)
                self._conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=TIMEOUT_S, context=context
                )
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
        return self._conn

    def request(
        self,
        method: str,
        path: str,
        query: Query = (),
        body: object = None,
        content_type: str = "application/json",
    ) -> bytes:
        import http.client

        url = self.prefix + path + (f"?{urlencode(list(query))}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            reused = self._conn is not None
            conn = self._connection()
            try:
                conn.request(method, url, body=data, headers=headers)
                resp = conn.getresponse()
                answer = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                # A kept-alive connection the server closed meanwhile: once more, on a new one,
                # when sending it twice cannot do twice what it asks.
                if not reused or attempt == 2 or method not in IDEMPOTENT_METHODS:
                    raise _unreachable(self.creds.server, exc) from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise _unreachable(self.creds.server, exc) from exc
        if resp.will_close:
            self.close()
        if not 200 <= resp.status < 300:
            raise HttpError(resp.status, resp.reason, answer)
        return answer

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _unreachable(server: str, exc: BaseException) -> NestError:
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        return NestError(f"cannot reach the API server at {server}: {exc.verify_message}")
    return NestError(f"cannot reach the API server at {server}: {exc}")


class ViaClient:
    """The same requests through a kubernetes ApiClient (auth providers, proxies, ...)."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def request(
        self,
        method: str,
        path: str,
        query: Query = (),
        body: object = None,
        content_type: str = "application/json",
    ) -> bytes:
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            serialized = self.api.param_serialize(
                method,
                path,
                query_params=list(query),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            resp = self.api.call_api(*serialized)
            answer = bytes(resp.read())
        except ApiException as exc:
            body_ = str(exc.body or "").encode()
            raise HttpError(int(exc.status or 0), str(exc.reason), body_) from exc
        except OSError as exc:  # urllib3's errors are OSErrors (MaxRetryError is not: below)
            raise _unreachable(str(self.api.configuration.host), exc) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("urllib3"):
                raise _unreachable(str(self.api.configuration.host), exc) from exc
            raise
        if not 200 <= resp.status < 300:
            raise HttpError(int(resp.status), str(resp.reason), answer)
        return answer

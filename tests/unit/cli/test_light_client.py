"""The `nest` command's requests without the kubernetes client: what is sent, what it costs.

A fake API server on 127.0.0.1 records each request, so these tests see the paths, queries,
methods, content types and credentials `nest.kube.Cluster` sends over the light transport, over
TLS with a client certificate too, and the errors it turns answers into. A subprocess shows the
common commands import neither the kubernetes client nor the pydantic models (issue 14).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from crds import Interface, Isolation
from nest import functions, kube, names, rest
from nest.errors import ApiError, NestError, NotFoundError
from nest.kubeconfig import Credentials

ROOT = Path(__file__).resolve().parents[3]
FN_PATH = "/apis/nest.sandbox.dev/v1alpha1/namespaces/team/sandboxdeployments"


class FakeApi:
    """Answers (status, JSON) per (method, path); records (method, path?query, headers, body)."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}
        self.seen: list[tuple[str, str, dict[str, str], Any]] = []
        self.peer_certs: list[Any] = []
        self.connections: set[tuple[str, int]] = set()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the API server

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                api.seen.append(
                    (self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                api.connections.add(self.client_address)
                if hasattr(self.connection, "getpeercert"):
                    api.peer_certs.append(self.connection.getpeercert())
                status, doc = api.routes.get(
                    (self.command, self.path.split("?")[0]), (404, {"message": "nope"})
                )
                data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def api() -> Iterator[tuple[FakeApi, ThreadingHTTPServer]]:
    fake = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake, server
    server.shutdown()
    server.server_close()


def kubeconfig(path: Path, server: str, user: dict[str, Any], **cluster: Any) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "team"}}],
        "current-context": "x",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def plain_cluster(tmp_path: Path, server: ThreadingHTTPServer) -> kube.Cluster:
    url = f"http://127.0.0.1:{server.server_address[1]}"
    return kube.Cluster(kubeconfig(tmp_path / "config", url, {"token": "tok"}), None)


def fn(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "team"}, "spec": {}}


def test_reads_are_plain_requests_with_the_token_on_one_connection(
    tmp_path: Path, api: tuple[FakeApi, ThreadingHTTPServer]
) -> None:
    fake, server = api
    fake.routes[("GET", FN_PATH)] = (200, {"items": [fn("b"), fn("a")]})
    fake.routes[("GET", FN_PATH + "/a")] = (200, fn("a"))
    fake.routes[("GET", FN_PATH.replace("sandboxdeployments", "sandboxes"))] = (200, {})
    cluster = plain_cluster(tmp_path, server)
    assert cluster.light and cluster.namespace == "team"
    assert [o["metadata"]["name"] for o in cluster.list("sandboxdeployments")] == ["a", "b"]
    assert cluster.function("a") == fn("a")
    cluster.list("sandboxes", selector="app=x,tier in (a,b)")
    (_, first, headers, _), _, (_, third, _, _) = fake.seen
    assert first == FN_PATH and headers["authorization"] == "Bearer tok"
    assert third.endswith("/sandboxes?labelSelector=app%3Dx%2Ctier+in+%28a%2Cb%29")
    assert len(fake.connections) == 1  # kept alive across the command's calls
    assert cluster.bearer_token() == "tok"


def test_writes_send_the_methods_and_content_types_the_kubernetes_client_sent(
    tmp_path: Path, api: tuple[FakeApi, ThreadingHTTPServer]
) -> None:
    fake, server = api
    for method, path in [
        ("POST", FN_PATH),
        ("PUT", FN_PATH + "/a"),
        ("PATCH", FN_PATH + "/a"),
        ("PATCH", FN_PATH + "/a/scale"),
        ("DELETE", FN_PATH + "/a"),
    ]:
        fake.routes[(method, path)] = (200, fn("a"))
    cluster = plain_cluster(tmp_path, server)
    cluster.create("sandboxdeployments", fn("a"))
    cluster.replace("sandboxdeployments", fn("a"))
    cluster.patch("sandboxdeployments", "a", {"spec": {"x": 1}})
    cluster.scale("a", 3)
    cluster.delete("sandboxdeployments", "a")
    sent = [(m, p, h.get("content-type"), b) for m, p, h, b in fake.seen]
    assert sent == [
        ("POST", FN_PATH, "application/json", fn("a")),
        ("PUT", FN_PATH + "/a", "application/json", fn("a")),
        ("PATCH", FN_PATH + "/a", "application/merge-patch+json", {"spec": {"x": 1}}),
        ("PATCH", FN_PATH + "/a/scale", "application/merge-patch+json", {"spec": {"replicas": 3}}),
        ("DELETE", FN_PATH + "/a?propagationPolicy=Foreground", None, None),
    ]


def test_answers_become_the_errors_the_commands_print(
    tmp_path: Path, api: tuple[FakeApi, ThreadingHTTPServer]
) -> None:
    fake, server = api
    fake.routes[("GET", FN_PATH)] = (403, {"message": "sandboxdeployments is forbidden"})
    fake.routes[("GET", FN_PATH + "/weird")] = (200, b"[1, 2]")
    cluster = plain_cluster(tmp_path, server)
    with pytest.raises(NotFoundError, match=r"^function team/gone: not found$"):
        cluster.function("gone")
    assert cluster.find("sandboxdeployments", "gone") is None
    with pytest.raises(
        ApiError, match=r"listing .* in team: sandboxdeployments is forbidden \(HTTP 403\)"
    ):
        cluster.list("sandboxdeployments")
    with pytest.raises(ApiError, match="unexpected answer"):
        cluster.function("weird")


def test_pods_events_and_the_gateway_read_from_raw_json(
    tmp_path: Path, api: tuple[FakeApi, ThreadingHTTPServer]
) -> None:
    fake, server = api
    ready = {"containerStatuses": [{"ready": True}], "podIP": "127.0.0.9"}
    fake.routes[("GET", "/api/v1/namespaces/nest-system/pods")] = (
        200,
        {
            "items": [
                {"metadata": {"name": "old", "deletionTimestamp": "t"}, "status": ready},
                {
                    "metadata": {"name": "starting"},
                    "status": {"containerStatuses": [{"ready": False}]},
                },
                {"metadata": {"name": "gw"}, "status": ready},
            ]
        },
    )
    fake.routes[("GET", "/api/v1/namespaces/team/events")] = (
        200,
        {
            "items": [
                {"involvedObject": {"name": "a"}, "lastTimestamp": "2", "eventTime": None},
                {"involvedObject": {"name": "other"}, "lastTimestamp": "0"},
                {"involvedObject": {"name": "a"}, "lastTimestamp": "1"},
            ]
        },
    )
    cluster = plain_cluster(tmp_path, server)
    assert cluster.gateway_url() == "http://127.0.0.9:8090"
    assert fake.seen[-1][1].endswith("?labelSelector=app.kubernetes.io%2Fname%3Dnest-gateway")
    events = cluster.events_about({"a"})
    # Oldest first, without the nulls (as the kubernetes client's serialisation left them).
    assert events == [
        {"involvedObject": {"name": "a"}, "lastTimestamp": "1"},
        {"involvedObject": {"name": "a"}, "lastTimestamp": "2"},
    ]
    fake.routes[("GET", "/api/v1/namespaces/nest-system/pods")] = (403, {"message": "no"})
    assert cluster.gateway_url() is None  # not ours to see: invoke goes direct


def test_an_api_server_that_is_not_there_is_one_error(tmp_path: Path) -> None:
    cluster = kube.Cluster(
        kubeconfig(tmp_path / "config", "http://127.0.0.1:1", {"token": "t"}), None
    )
    with pytest.raises(NestError, match=r"cannot reach the API server at http://127\.0\.0\.1:1"):
        cluster.function("a")


def test_a_closed_kept_alive_connection_is_retried_only_for_idempotent_methods() -> None:
    """The server answers a connection's first request and closes it on the second unanswered,
    as one closing an idle keep-alive does: a GET is sent again on a new connection; a POST may
    have been acted on, so it is an error, not a second create."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as reader:
                for answered in (True, False):
                    request = reader.readline().decode()
                    while reader.readline() not in (b"\r\n", b""):
                        pass
                    if not request:
                        break
                    seen.append(request.split()[0])
                    if not answered:
                        break  # closed with the request unanswered
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    threading.Thread(target=serve, daemon=True).start()
    try:
        light = rest.Light(Credentials(server=f"http://127.0.0.1:{listener.getsockname()[1]}"))
        assert light.request("GET", "/a") == b"{}"
        assert light.request("GET", "/b") == b"{}"  # second connection, after one retry
        assert seen == ["GET", "GET", "GET"]
        with pytest.raises(NestError, match="cannot reach the API server"):
            light.request("POST", "/c")  # on the kept-alive second connection: not again
        assert seen == ["GET", "GET", "GET", "POST"]
    finally:
        listener.close()


def _tls_files(tmp_path: Path) -> dict[str, Path]:
    """A CA, a serving certificate for 127.0.0.1 and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def cert(name: str, key: Any, issuer: Any, signer: Any, ca: bool = False) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    files = {}
    pairs = {
        "ca": (cert("test-ca", ca_key, "test-ca", ca_key, ca=True), ca_key),
        "server": (cert("127.0.0.1", server_key, "test-ca", ca_key), server_key),
        "client": (cert("nest-user", client_key, "test-ca", ca_key), client_key),
    }
    for name, (certificate, key) in pairs.items():
        files[f"{name}.crt"] = tmp_path / f"{name}.crt"
        files[f"{name}.crt"].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        files[f"{name}.key"] = tmp_path / f"{name}.key"
        files[f"{name}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return files


@pytest.mark.parametrize("inline", [False, True])
def test_tls_verifies_the_server_and_presents_the_client_certificate(
    tmp_path: Path, api: tuple[FakeApi, ThreadingHTTPServer], inline: bool
) -> None:
    import base64

    fake, server = api
    files = _tls_files(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files["ca.crt"]))
    context.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no answer
    context.load_cert_chain(str(files["server.crt"]), str(files["server.key"]))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    fake.routes[("GET", FN_PATH + "/a")] = (200, fn("a"))
    url = f"https://127.0.0.1:{server.server_address[1]}"

    def b64(name: str) -> str:
        return base64.b64encode(files[name].read_bytes()).decode()

    user = (
        {"client-certificate-data": b64("client.crt"), "client-key-data": b64("client.key")}
        if inline
        else {"client-certificate": "client.crt", "client-key": "client.key"}
    )
    path = kubeconfig(tmp_path / "config", url, user, **{"certificate-authority": "ca.crt"})
    assert kube.Cluster(path, None).function("a") == fn("a")
    subject = dict(x[0] for x in fake.peer_certs[-1]["subject"])
    assert subject["commonName"] == "nest-user"
    assert "authorization" not in fake.seen[-1][2]
    # Another CA's server is refused, not trusted.
    (tmp_path / "other").mkdir()
    other = _tls_files(tmp_path / "other")
    path = kubeconfig(
        tmp_path / "config", url, user, **{"certificate-authority": str(other["ca.crt"])}
    )
    with pytest.raises(NestError, match="cannot reach the API server"):
        kube.Cluster(path, None).function("a")


def test_a_kubeconfig_the_loader_cannot_read_goes_through_the_kubernetes_client(
    tmp_path: Path, api: tuple[FakeApi, ThreadingHTTPServer]
) -> None:
    fake, server = api
    fake.routes[("GET", FN_PATH + "/a")] = (200, fn("a"))
    fake.routes[("GET", FN_PATH)] = (403, {"message": "forbidden here"})
    url = f"http://127.0.0.1:{server.server_address[1]}"
    # tls-server-name is not implemented by the light path (and means nothing over http).
    path = kubeconfig(tmp_path / "config", url, {"token": "tok"}, **{"tls-server-name": "k"})
    cluster = kube.Cluster(path, None)
    assert not cluster.light
    assert cluster.function("a") == fn("a")
    assert fake.seen[-1][2]["authorization"] == "Bearer tok"
    assert cluster.bearer_token() == "tok"
    with pytest.raises(NotFoundError):
        cluster.function("gone")
    with pytest.raises(ApiError, match=r"forbidden here \(HTTP 403\)"):
        cluster.list("sandboxdeployments")


def test_the_light_names_are_the_models_own() -> None:
    assert tuple(mode.value for mode in Isolation) == names.ISOLATIONS
    assert tuple(kind.value for kind in Interface) == names.INTERFACES
    assert functions.MAX_INLINE_BYTES == names.MAX_INLINE_BYTES


HEAVY = ("kubernetes", "pydantic", "nest_api.models", "nest.functions", "urllib3")
PROBE = """
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        function = {"handler": "main:handler", "source": {"inline": {"main.py": ""}}}
        item = {"metadata": {"name": "hello", "namespace": "team", "uid": "u"},
                "spec": {"replicas": 1, "template": {"spec": {"function": function}}},
                "status": {"readyReplicas": 1}}
        body = json.dumps(item if self.path.endswith("/hello") else {"items": [item]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=server.serve_forever, daemon=True).start()
config = Path(sys.argv[1])
config.write_text(config.read_text().replace("PORT", str(server.server_address[1])))
before = set(sys.modules)
from nest import cli
try:
    code = cli.main(sys.argv[2:])
except SystemExit as exit_:  # --help
    code = exit_.code
print(json.dumps({"code": code, "modules": sorted(set(sys.modules) - before)}), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["get", "functions"], ["get", "functions", "hello"], ["describe", "fn", "hello"]],
)
def test_the_common_commands_import_neither_the_kubernetes_client_nor_the_models(
    tmp_path: Path, argv: list[str]
) -> None:
    path = kubeconfig(tmp_path / "config", "http://127.0.0.1:PORT", {"token": "t"})
    env = {**os.environ, "NEST_KUBECONFIG": str(path)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["code"] == 0
    loaded = set(report["modules"])
    assert "nest.inspect_cmd" in loaded  # the probe sees the command's imports
    assert {m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY} == set()
    if argv == ["--help"]:
        assert "nest deploy" in proc.stdout
        # No request, so neither HTTP, TLS nor the kubeconfig's YAML.
        assert loaded.isdisjoint({"http.client", "ssl", "yaml"})
    else:
        assert "hello" in proc.stdout
        assert "nest.rest" in loaded

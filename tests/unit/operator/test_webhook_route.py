"""Which replica the webhook's ExternalName route names, with several replicas on loopback.

A replica takes the route only from one that does not answer a TLS handshake: two live replicas
must not take it in turns, and a hung one (the kernel still accepts its TCP connections) or a
dead one must lose it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes import client

from nest_operator import webhook
from nest_operator import webhook_certs as certs
from nest_operator.webhook import WebhookServer, WebhookSettings, _taken_by_another


def service(kind: str, host: str | None = None) -> dict[str, object]:
    spec: dict[str, object] = {"type": kind}
    if host is not None:
        spec["externalName"] = host
    return {"metadata": {"name": "hook"}, "spec": spec}


@pytest.mark.parametrize(
    ("current", "desired", "taken"),
    [
        (service("ExternalName", "127.0.0.2"), service("ExternalName", "127.0.0.3"), True),
        (service("ExternalName", "127.0.0.3"), service("ExternalName", "127.0.0.3"), False),
        (service("ExternalName", ""), service("ExternalName", "127.0.0.3"), False),
        (None, service("ExternalName", "127.0.0.3"), False),
        (service("ClusterIP"), service("ClusterIP"), False),
    ],
)
def test_taken_by_another(
    current: dict[str, object] | None, desired: dict[str, object], taken: bool
) -> None:
    assert _taken_by_another(current, desired) is taken


@pytest.fixture
def server() -> WebhookServer:
    return WebhookServer(client.ApiClient(), WebhookSettings(port=0))


def tls_context() -> ssl.SSLContext:
    now = dt.datetime.now(dt.UTC)
    ca = certs.issue_ca(now)
    serving = certs.issue_serving(ca, ["localhost", "127.0.0.1"], now)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        crt, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        crt.write_bytes(serving.cert)
        key.write_bytes(serving.key)
        context.load_cert_chain(crt, key)
    return context


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # accepts, never speaks TLS: a stopped process looks like this


@pytest.fixture
async def listeners() -> AsyncIterator[tuple[int, int]]:
    tls = await asyncio.start_server(_silent, "127.0.0.1", 0, ssl=tls_context())
    mute = await asyncio.start_server(_silent, "127.0.0.1", 0)
    ports = (tls.sockets[0].getsockname()[1], mute.sockets[0].getsockname()[1])
    yield ports
    for s in (tls, mute):
        s.close()


async def test_a_replica_answers_only_with_a_handshake(
    server: WebhookServer, listeners: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook, "ROUTE_PROBE_TIMEOUT", 0.3)
    tls_port, mute_port = listeners
    object.__setattr__(server.settings, "port", tls_port)
    assert await server._answers("127.0.0.1")
    object.__setattr__(server.settings, "port", mute_port)
    assert not await server._answers("127.0.0.1")  # TCP accepted, no handshake: hung
    assert not await server._answers("127.0.0.254")  # nothing listens there: dead
    server.facts.close()

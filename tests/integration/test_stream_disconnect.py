"""A caller that leaves a streamed answer through the gateway stops the function at once.

Caller -> gateway -> pool pod's runtime -> sandbox, on the local cluster: the function streams
one chunk, then waits on a connection to this test (a gate only the test could open, and never
does). The caller reads the chunk and hangs up. The gateway notices and drops its upstream
request; the runtime notices that and cancels the stream, and the function's `finally` tells the
test over the gate's connection. Its one concurrency slot is then free: a second call of the
function (concurrency 1, a two-minute timeout) starts streaming at once. Before, both waited for
the function's timeout.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest

from tests.integration.test_gateway import (  # noqa: F401 - fixtures used by name
    Client,
    developer,
    function,
    gateway_url,
    operator_active,
)
from tests.kube import wait_for

SOURCE = """
import asyncio
from sandbox import Response


async def handler(event, context):
    host, port = event["gate"].rsplit(":", 1)  # the test's listener

    async def chunks():
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            yield "first\\n"
            await reader.read(1)  # the test never sends: only a cancellation ends this wait
            yield "second\\n"
        finally:
            writer.write(b"closed")  # no await: this also runs when cancelled
            writer.close()

    return Response(200, {"Content-Type": "text/plain"}, chunks())
"""
DEADLINE = 30.0  # seconds; the function's own timeout is 120


@pytest.fixture(autouse=True)
def with_operator(operator_active: bool) -> None:  # noqa: F811
    if not operator_active:
        pytest.skip("waits for the operator (deploy/operator/ or `nest operator run`)")


@contextmanager
def gate() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(DEADLINE)
        yield listener


class Caller:
    """One call on a connection of its own, so that hanging up closes that connection."""

    def __init__(self, developer: Client, name: str, gate: str) -> None:  # noqa: F811
        url = urlsplit(developer.fn(f"/{name}:invoke"))
        self.conn = http.client.HTTPConnection(url.netloc, timeout=DEADLINE)
        body = json.dumps({"gate": gate}).encode()
        self.conn.request("POST", url.path, body=body, headers={
            "Content-Type": "application/json", **developer.session.headers,
        })  # fmt: skip
        self.resp = self.conn.getresponse()

    def first(self) -> bytes:
        return self.resp.read(len(b"first\n"))  # chunked, decoded as it comes

    def hang_up(self) -> None:
        assert self.conn.sock is not None
        self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


@pytest.mark.parametrize("isolation", ["subprocess", "namespace"])
def test_a_caller_that_leaves_stops_the_stream_and_frees_the_slot(
    developer: Client,  # noqa: F811
    isolation: str,
) -> None:
    with gate() as listener:
        host, port = listener.getsockname()[:2]
        name = f"leave-{isolation[:3]}"
        body = function(name, code=SOURCE, isolation=isolation, replicas=1, concurrency=1,
                        timeoutSeconds=120, maxDurationSeconds=600)  # fmt: skip
        created = developer.create(**body)
        assert created.status_code == 201, created.text

        def answering() -> Caller | None:
            call = Caller(developer, name, f"{host}:{port}")
            if call.resp.status == 200:
                return call
            text = call.resp.read(2000).decode(errors="replace")
            call.hang_up()  # 503 until its sandbox is ready
            raise AssertionError(f"{call.resp.status}: {text}")  # "not yet", and why

        call = wait_for(answering, timeout=180, what=f"{name} to answer")
        assert call.first() == b"first\n"
        opened, _ = listener.accept()  # the function, after its first chunk
        with opened:
            opened.settimeout(DEADLINE)
            call.hang_up()
            assert opened.recv(16) == b"closed"  # its finally ran, long before its timeout
        # The one slot is free: a second call streams at once (it would queue behind the
        # first for its whole timeout otherwise).
        again = Caller(developer, name, f"{host}:{port}")
        assert again.resp.status == 200 and again.first() == b"first\n"
        second, _ = listener.accept()
        with second:
            second.settimeout(DEADLINE)
            again.hang_up()
            assert second.recv(16) == b"closed"

"""`RuntimeClient`: the typed async client the sidecar uses to drive the runtime daemon.

Why: the sidecar (our kubelet) should speak in models and typed errors, not URLs and status
codes. Every call goes over the runtime's unix socket; failures come back as the exceptions in
`sandbox.errors` (e.g. `CreateFailed` whose `error` is the CamelCase reason to copy into
Kubernetes status). After a runtime restart `list()` is empty: the sidecar re-creates.

    async with RuntimeClient("/run/nest/runtime.sock") as runtime:
        async with runtime.watch() as events:     # subscribe first,
            running = await runtime.list()        # then relist,
            async for event in events:            # then follow changes
                ...
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import aiohttp

from sandbox.api import (
    CreateSandbox,
    RuntimeInfo,
    SandboxEvent,
    SandboxInfo,
    SandboxList,
    StopSandbox,
)
from sandbox.errors import RuntimeUnavailable, client_error

BASE = "http://nest-runtime"


def _error_body(raw: bytes) -> dict[str, Any]:
    """The runtime's ErrorBody; a body that is not one (a proxy's or a crash's plain text)
    still becomes a typed error carrying that text, never a JSON decoding error."""
    try:
        error = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return error if isinstance(error, dict) else {}


class RuntimeClient:
    def __init__(self, socket_path: str, timeout_s: float = 60.0) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=socket_path),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )

    async def __aenter__(self) -> RuntimeClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def _call(self, method: str, path: str, body: str | None = None, **kw: Any) -> Any:
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            async with self._session.request(
                method, BASE + path, data=body, headers=headers, **kw
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    error = _error_body(raw)
                    raise client_error(
                        response.status,
                        str(error.get("error", "Error")),
                        str(error.get("message", raw.decode(errors="replace"))),
                    )
                return json.loads(raw) if raw else None
        except aiohttp.ClientConnectionError as exc:
            raise RuntimeUnavailable(str(exc)) from exc

    async def info(self) -> RuntimeInfo:
        return RuntimeInfo.model_validate(await self._call("GET", "/v1/runtime"))

    async def create(self, request: CreateSandbox) -> SandboxInfo:
        """Raises CreateFailed (reason in `.error`) when the function does not load."""
        body = request.model_dump_json()
        return SandboxInfo.model_validate(await self._call("POST", "/v1/sandboxes", body))

    async def get(self, sandbox_id: str) -> SandboxInfo:
        return SandboxInfo.model_validate(await self._call("GET", f"/v1/sandboxes/{sandbox_id}"))

    async def list(self) -> list[SandboxInfo]:
        return SandboxList.model_validate(await self._call("GET", "/v1/sandboxes")).items

    async def stop(self, sandbox_id: str, grace_seconds: float = 5.0) -> SandboxInfo:
        body = StopSandbox(grace_seconds=grace_seconds).model_dump_json()
        found = await self._call("POST", f"/v1/sandboxes/{sandbox_id}/stop", body)
        return SandboxInfo.model_validate(found)

    async def remove(self, sandbox_id: str, grace_seconds: float = 5.0) -> None:
        params = {"grace_seconds": str(grace_seconds)}
        await self._call("DELETE", f"/v1/sandboxes/{sandbox_id}", params=params)

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[SandboxEvent]]:
        """Subscribe to state changes; once entered, no later change is missed.

        Enter, then `list()`, then iterate: that is the relist-and-watch a restarted sidecar needs.
        The iterator ends when the runtime goes away or cuts off a watcher that fell behind.
        """
        try:
            response = await self._session.get(
                BASE + "/v1/events", timeout=aiohttp.ClientTimeout(total=None)
            )
        except aiohttp.ClientConnectionError as exc:
            raise RuntimeUnavailable(str(exc)) from exc
        try:
            yield self._events(response)
        finally:
            response.close()

    @staticmethod
    async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[SandboxEvent]:
        try:
            async for line in response.content:
                if line.strip():
                    yield SandboxEvent.model_validate_json(line)
        except aiohttp.ClientConnectionError as exc:
            raise RuntimeUnavailable(str(exc)) from exc

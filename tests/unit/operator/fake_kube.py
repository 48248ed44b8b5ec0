"""An in-memory stand-in for `nest_operator.kube.Kube`, for testing controller shells quickly.

Why: the controllers' pure decisions have their own tests, but what they do with them (claim,
create in batches, expect, collect, back off, write status and Events) lives in the shells.
This fake writes through to the same `Store` as the real `Kube`, names objects as the API
server does (generateName, uid, resourceVersion), applies merge patches, and can be told to
refuse creations, so a test drives `reconcile` exactly as the manager does and counts requests.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nest_kube import ApiError
from nest_operator.store import Kind, Obj, Store


def api_error(status: int, message: str, reason: str = "Forbidden") -> ApiError:
    """An ApiError as `nest_kube.HttpApi` raises it, with the server's Status body."""
    return ApiError(status, reason, {"kind": "Status", "status": "Failure", "message": message})


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 merge patch."""
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):  # into {} if absent: nulls in a new object go too
            out[key] = merge(out[key] if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class Event:
    name: str
    type: str
    reason: str
    message: str


@dataclass
class FakeKube:
    store: Store
    # Called before each create with (kind, body); raise to refuse it.
    on_create: Callable[[Kind, Obj], None] | None = None
    creates: list[tuple[Kind, Obj]] = field(default_factory=list)  # every attempt
    deletes: list[str] = field(default_factory=list)
    patches: list[tuple[Kind, str, dict[str, Any]]] = field(default_factory=list)
    scales: list[tuple[Kind, str, int]] = field(default_factory=list)  # /scale writes
    events: list[Event] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def stored(self, kind: Kind, namespace: str, body: Obj) -> Obj:
        """`body` as the API server would store it (also usable to simulate a watch event)."""
        n = next(self._ids)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("name", f"{meta.get('generateName', 'obj-')}{n:05d}")
        meta["namespace"] = namespace
        meta["uid"] = f"uid-{n}"
        meta["resourceVersion"] = str(n)
        meta.setdefault("creationTimestamp", "2024-01-01T00:00:00Z")
        meta.setdefault("generation", 1)
        return obj

    async def create(self, kind: Kind, namespace: str, body: Obj) -> Obj:
        self.creates.append((kind, body))
        if self.on_create is not None:
            self.on_create(kind, body)
        obj = self.stored(kind, namespace, body)
        self.store.apply(kind, "ADDED", obj)
        return obj

    def _bump(self, obj: Obj) -> Obj:
        obj["metadata"]["resourceVersion"] = str(next(self._ids))
        return obj

    async def patch(self, kind: Kind, namespace: str, name: str, patch: Any) -> Obj:
        self.patches.append((kind, name, patch))
        current = self.store.get(kind, f"{namespace}/{name}")
        assert current is not None, f"{kind} {namespace}/{name} does not exist"
        obj = self._bump(merge(current, patch))
        self.store.apply(kind, "MODIFIED", obj)
        return obj

    async def scale(
        self, kind: Kind, namespace: str, name: str, replicas: int, resource_version: str = ""
    ) -> None:
        """`Kube.scale`: replicas through the scale subresource (also counted as a patch)."""
        self.scales.append((kind, name, replicas))
        await self.patch(kind, namespace, name, {"spec": {"replicas": replicas}})

    async def patch_status(self, kind: Kind, namespace: str, name: str, status: Obj) -> Obj:
        return await self.patch(kind, namespace, name, {"status": status})

    async def delete(self, kind: Kind, obj: Obj) -> None:
        self.deletes.append(obj["metadata"]["name"])
        self.store.apply(kind, "DELETED", self._bump(copy.deepcopy(obj)))

    def event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(obj["metadata"]["name"], type_, reason, message))

    def sandbox_creates(self) -> int:
        return sum(1 for kind, _ in self.creates if kind == Kind.SANDBOX)

"""`FakeApi`: the layer's `Api` in memory, behaving as the API server does where shells care.

Why: the components' I/O shells (routing, retries, conflicts, finalizers, Event counts) deserve
unit tests, and those need an API server that answers like the real one without being one. The
fake keeps objects per resource with a cluster-wide resourceVersion counter, and implements:

- uid, resourceVersion, generation and creationTimestamp on create; generateName;
- 404 on a missing object, 409 AlreadyExists, and 409 Conflict for a stale
  `metadata.resourceVersion` in a replace or patch body (optimistic concurrency);
- merge patches (RFC 7386) and JSON patches (add, remove, replace, test: a failed test is 422),
  and the `status` and `scale` subresources (scale maps to spec.replicas);
- delete: with finalizers it only sets deletionTimestamp; a UID precondition that does not
  match is 409; removing the last finalizer of a deleting object deletes it;
- list (always at the current version) and watch (from a version, a bookmark first) with label
  and field selectors;
  `compact()` forgets history so a watch from an older version gets 410 Gone, as after etcd
  compaction;
- `fail(verb, error, times)` injects errors, and `writes` counts every write request by verb
  and resource (refused ones too: they cost the server as much), so a test can assert how many
  API writes a shell made.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any

from nest_kube.api import (
    ADDED,
    BOOKMARK,
    DELETED,
    JSON_PATCH,
    MERGE_PATCH,
    MODIFIED,
    ApiError,
    WatchEvent,
)
from nest_kube.resources import Obj, Resource, fields_match, labels_match


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def json_patch(doc: Obj, ops: list[Obj]) -> Obj:
    """RFC 6902's add, remove, replace and test; a failed op is the 422 the server answers."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _pointer(str(op["path"]))
        node: Any = doc
        try:
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            if isinstance(node, list):
                index = len(node) if last == "-" else int(last)
                if op["op"] == "add":
                    node.insert(index, copy.deepcopy(op["value"]))
                elif op["op"] == "remove":
                    del node[index]
                elif op["op"] == "replace":
                    node[index] = copy.deepcopy(op["value"])
                elif op["op"] == "test" and node[index] != op["value"]:
                    raise ValueError("test failed")
            elif op["op"] in ("add", "replace"):
                if op["op"] == "replace" and last not in node:
                    raise KeyError(last)
                node[last] = copy.deepcopy(op["value"])
            elif op["op"] == "remove":
                del node[last]
            elif op["op"] == "test" and node.get(last) != op["value"]:
                raise ValueError("test failed")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise _status(422, "Invalid", f"json patch {op}: {exc}") from exc
    return doc


def _status(code: int, reason: str, message: str) -> ApiError:
    return ApiError(code, reason, {"kind": "Status", "code": code, "reason": reason,
                                   "message": message})  # fmt: skip


class FakeApi:
    """An in-memory API server for unit tests of shells written against `Api`."""

    def __init__(self) -> None:
        self.objects: dict[Resource, dict[tuple[str, str], Obj]] = {}
        self.history: list[tuple[int, Resource, WatchEvent]] = []
        self.writes: Counter[tuple[str, str]] = Counter()
        # Versions start above "0", which a watch reads as "from now", never as a version.
        self._version = itertools.count(2)
        self._current = 1
        self._compacted = 0
        self._tick = asyncio.Event()  # set, and replaced, on every change: wakes watchers
        self._failures: dict[str, list[ApiError]] = {}
        self.bookmarks = True

    # -- test controls -------------------------------------------------------------------------

    def fail(self, verb: str, error: ApiError, times: int = 1) -> None:
        """The next `times` calls of `verb` (get, list, create, ..., watch) raise `error`."""
        self._failures.setdefault(verb, []).extend([error] * times)

    def compact(self) -> None:
        """Forget the history: watches from any version seen so far get 410 Gone."""
        self._compacted = self._current
        self.history.clear()

    def put(self, resource: Resource, obj: Obj) -> Obj:
        """Store an object as if someone else had created it (no write is counted)."""
        meta = obj.setdefault("metadata", {})
        return self._store(resource, str(meta.get("namespace") or ""), obj, ADDED)

    def _check(self, verb: str) -> None:
        queued = self._failures.get(verb)
        if queued:
            raise queued.pop(0)

    def _bump(self) -> str:
        self._current = next(self._version)
        return str(self._current)

    def _store(self, resource: Resource, namespace: str, obj: Obj, kind: str) -> Obj:
        obj = copy.deepcopy(obj)
        obj.setdefault("apiVersion", resource.api_version)
        obj.setdefault("kind", resource.kind)
        meta = obj["metadata"]
        if resource.namespaced:
            meta["namespace"] = namespace
        if kind == ADDED:
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            meta.setdefault("generation", 1)
        meta["resourceVersion"] = self._bump()
        self.objects.setdefault(resource, {})[(namespace, meta["name"])] = obj
        self._notify(resource, WatchEvent(kind, copy.deepcopy(obj)))
        return copy.deepcopy(obj)

    def _notify(self, resource: Resource, event: WatchEvent) -> None:
        self.history.append((self._current, resource, event))
        self._tick.set()
        self._tick = asyncio.Event()

    def _find(self, resource: Resource, namespace: str | None, name: str) -> Obj:
        found = self.objects.get(resource, {}).get((namespace or "", name))
        if found is None:
            raise _status(404, "NotFound", f'{resource} "{name}" not found')
        return found

    # -- the verbs -----------------------------------------------------------------------------

    async def get(
        self, resource: Resource, namespace: str | None, name: str, *, subresource: str = ""
    ) -> Obj:
        self._check("get")
        obj = self._find(resource, namespace, name)
        return _scale(obj) if subresource == "scale" else copy.deepcopy(obj)

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str = "",
        field_selector: str = "",
        resource_version: str | None = None,
    ) -> Obj:
        self._check("list")
        items = [
            copy.deepcopy(obj)
            for (ns, _), obj in sorted(self.objects.get(resource, {}).items())
            if (not namespace or ns == namespace)
            and labels_match(label_selector, obj["metadata"].get("labels"))
            and fields_match(field_selector, obj)
        ]
        meta = {"resourceVersion": str(self._current)}
        return {"kind": f"{resource.kind}List", "metadata": meta, "items": items}

    async def create(
        self, resource: Resource, namespace: str | None, body: Mapping[str, Any]
    ) -> Obj:
        self._check("create")
        self.writes["create", resource.plural] += 1
        name = body.get("metadata", {}).get("name")
        if name and (namespace or "", name) in self.objects.get(resource, {}):
            raise _status(409, "AlreadyExists", f'{resource} "{name}" already exists')
        return self._store(resource, namespace or "", dict(body), ADDED)

    def _update(
        self, resource: Resource, namespace: str | None, name: str, new: Obj, subresource: str
    ) -> Obj:
        old = self._find(resource, namespace, name)
        expected = (new.get("metadata") or {}).get("resourceVersion")
        if expected and expected != old["metadata"]["resourceVersion"]:
            raise _status(409, "Conflict", f'the object "{name}" has been modified; try again')
        if subresource == "status":
            new = {**old, "status": new.get("status")}
        elif subresource == "scale":
            replicas = (new.get("spec") or {}).get("replicas")
            new = {**old, "spec": {**old.get("spec", {}), "replicas": replicas}}
        else:
            new = {**new, "status": old.get("status")} if "status" in old else dict(new)
            meta = {**old["metadata"], **(new.get("metadata") or {})}
            for key in ("uid", "creationTimestamp", "deletionTimestamp"):
                if key in old["metadata"]:
                    meta[key] = old["metadata"][key]
            if new.get("spec") != old.get("spec"):
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
            new["metadata"] = meta
        new["metadata"] = {**new["metadata"], "resourceVersion": old["metadata"]["resourceVersion"]}
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            del self.objects[resource][(namespace or "", name)]
            meta["resourceVersion"] = self._bump()
            self._notify(resource, WatchEvent(DELETED, copy.deepcopy(new)))
            return copy.deepcopy(new)
        stored = self._store(resource, namespace or "", new, MODIFIED)
        return _scale(stored) if subresource == "scale" else stored

    async def replace(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str = "",
    ) -> Obj:
        self._check("replace")
        self.writes["replace", resource.plural] += 1
        return self._update(resource, namespace, name, copy.deepcopy(dict(body)), subresource)

    async def patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        content_type: str = MERGE_PATCH,
        subresource: str = "",
    ) -> Obj:
        self._check("patch")
        self.writes["patch", resource.plural] += 1
        old = self._find(resource, namespace, name)
        base = _scale(old) if subresource == "scale" else old
        new = json_patch(base, patch) if content_type == JSON_PATCH else merge_patch(base, patch)
        # Only a resourceVersion the patch itself carries is a precondition.
        precondition = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(
            patch, dict) else None  # fmt: skip
        new["metadata"] = {**new["metadata"], "resourceVersion": precondition}
        return self._update(resource, namespace, name, new, subresource)

    async def delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: Mapping[str, str] | None = None,
    ) -> Obj:
        self._check("delete")
        self.writes["delete", resource.plural] += 1
        obj = self._find(resource, namespace, name)
        uid = (preconditions or {}).get("uid")
        if uid and uid != obj["metadata"]["uid"]:
            raise _status(409, "Conflict", f"precondition failed: UID in precondition: {uid}")
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj = {
                    **obj,
                    "metadata": {**obj["metadata"], "deletionTimestamp": "2026-01-01T00:00:01Z"},
                }
                return self._store(resource, namespace or "", obj, MODIFIED)
            return copy.deepcopy(obj)
        del self.objects[resource][(namespace or "", name)]
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = self._bump()
        self._notify(resource, WatchEvent(DELETED, copy.deepcopy(gone)))
        return gone

    async def watch(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        resource_version: str,
        label_selector: str = "",
        field_selector: str = "",
        timeout_seconds: int = 300,
        bookmarks: bool = True,
    ) -> AsyncIterator[WatchEvent]:
        self._check("watch")
        # "" and "0" mean "from now" (the real server: from its watch cache, any version).
        since = self._current if resource_version in ("", "0") else int(resource_version)
        if since < self._compacted:
            raise _status(410, "Expired", f"too old resource version: {since} ({self._compacted})")
        if bookmarks and self.bookmarks:
            yield WatchEvent(BOOKMARK, {"metadata": {"resourceVersion": str(self._current)}})
        position = since
        while True:
            tick = self._tick  # taken before the scan: a change made during a yield wakes us
            for version, kind, event in list(self.history):
                if version <= position or kind != resource:
                    continue
                position = version
                meta = event.object["metadata"]
                if namespace and meta.get("namespace") != namespace:
                    continue
                if labels_match(label_selector, meta.get("labels")) and fields_match(
                    field_selector, event.object
                ):
                    yield WatchEvent(event.type, copy.deepcopy(event.object))
            await tick.wait()

    async def close(self) -> None:
        return None


def _scale(obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {k: meta[k] for k in ("name", "namespace", "resourceVersion") if k in meta},
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0)},
    }

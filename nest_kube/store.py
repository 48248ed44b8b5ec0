"""The informer's store: the latest object per key, optional indices, and the deltas of a change.

Pure and synchronous on purpose: what a watch event or a relist *means* for the handlers (an
add, an update, a delete, or nothing) is decided here, against what the store holds, so the
rules are unit-tested without a server, and the informer is left with moving bytes. The rules
are client-go's (sharedIndexInformer.HandleDeltas) with two refinements Nest's consumers need:

- Whether a change is an add or an update depends on the store, not on the event's type: a
  MODIFIED for an unknown key is an add, an ADDED for a known one an update.
- A relist (`replace`) reports what changed while nobody watched: keys gone become deletes
  (with the last state seen), new keys adds, a different resourceVersion an update, and the
  same resourceVersion nothing at all, so a relist after a dropped watch costs consumers
  nothing. A key whose uid changed (deleted and created again meanwhile) is a delete of the old
  object then an add of the new one: a consumer keyed by uid must not take it for an update.

Indexers map an object to index values (e.g. by label, by node); `by_index` answers with every
object of a value, as client-go's Indexer.ByIndex does.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from nest_kube.api import ADDED, DELETED, MODIFIED
from nest_kube.resources import Obj, object_key, resource_version

IndexFunc = Callable[[Obj], Iterable[str]]
NAMESPACE_INDEX = "namespace"


def by_namespace(obj: Obj) -> list[str]:
    """The namespace index client-go ships (MetaNamespaceIndexFunc)."""
    namespace = (obj.get("metadata") or {}).get("namespace")
    return [str(namespace)] if namespace else []


def by_label(key: str) -> IndexFunc:
    """An index of objects by the value of one label (objects without it are not indexed)."""

    def index(obj: Obj) -> list[str]:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return [str(labels[key])] if key in labels else []

    return index


@dataclass(frozen=True)
class Delta:
    """What handlers are told: ADDED (obj), MODIFIED (old → obj) or DELETED (last known obj)."""

    type: str
    obj: Obj
    old: Obj | None = None

    @property
    def key(self) -> str:
        return object_key(self.obj)


def _uid(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


class Store:
    """Objects by key (`namespace/name`), with indices kept in step."""

    def __init__(
        self,
        indexers: Mapping[str, IndexFunc] | None = None,
        key: Callable[[Obj], str] = object_key,
    ) -> None:
        self.key = key
        self.indexers = dict(indexers or {})
        self._items: dict[str, Obj] = {}
        self._indices: dict[str, dict[str, set[str]]] = {name: {} for name in self.indexers}

    # -- reads ---------------------------------------------------------------------------------

    def get(self, key: str) -> Obj | None:
        return self._items.get(key)

    def get_by(self, namespace: str | None, name: str) -> Obj | None:
        return self._items.get(f"{namespace}/{name}" if namespace else name)

    def list(self) -> builtins.list[Obj]:
        return list(self._items.values())

    def keys(self) -> builtins.list[str]:
        return list(self._items)

    def by_index(self, index: str, value: str) -> builtins.list[Obj]:
        keys = self._indices[index].get(value, set())
        return [self._items[key] for key in sorted(keys)]

    def index_values(self, index: str) -> builtins.list[str]:
        return sorted(self._indices[index])

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[Obj]:
        return iter(list(self._items.values()))

    # -- writes --------------------------------------------------------------------------------

    def _unindex(self, key: str, obj: Obj) -> None:
        for name, func in self.indexers.items():
            for value in func(obj):
                keys = self._indices[name].get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._indices[name][value]

    def _put(self, key: str, obj: Obj) -> None:
        old = self._items.get(key)
        if old is not None:
            self._unindex(key, old)
        self._items[key] = obj
        for name, func in self.indexers.items():
            for value in func(obj):
                self._indices[name].setdefault(value, set()).add(key)

    def _pop(self, key: str) -> Obj | None:
        old = self._items.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        return old

    def apply(self, event_type: str, obj: Obj) -> Delta | None:
        """A watch event into the store: the delta to report, or None when nothing changed."""
        key = self.key(obj)
        old = self._items.get(key)
        if event_type == DELETED:
            self._pop(key)
            return Delta(DELETED, obj, old)
        if event_type not in (ADDED, MODIFIED):
            raise ValueError(f"not a change event: {event_type}")
        if old is not None and resource_version(old) == resource_version(obj):
            return None  # seen already (a watch resumed at an older version replays it)
        self._put(key, obj)
        return Delta(ADDED, obj) if old is None else Delta(MODIFIED, obj, old)

    def replace(self, objs: Iterable[Obj]) -> builtins.list[Delta]:
        """A full list into the store: the deltas since its previous contents (deletes first)."""
        listed = {self.key(obj): obj for obj in objs}
        deltas: builtins.list[Delta] = []
        for key in [k for k in self._items if k not in listed]:
            gone = self._pop(key)
            assert gone is not None
            deltas.append(Delta(DELETED, gone, gone))
        changes: builtins.list[Delta] = []
        for key, obj in listed.items():
            old = self._items.get(key)
            if old is not None and _uid(old) != _uid(obj):
                self._pop(key)
                deltas.append(Delta(DELETED, old, old))  # recreated meanwhile: not an update
                old = None
            if old is None:
                changes.append(Delta(ADDED, obj))
            elif resource_version(old) != resource_version(obj):
                changes.append(Delta(MODIFIED, obj, old))
            else:
                continue
            self._put(key, obj)
        return deltas + changes

"""What the layer can name: API resources, their REST paths, and label/field selector matching.

Why a module of its own: every request the layer makes, and every object the fake keeps, is
addressed the same way (group, version, plural, namespaced), so the path arithmetic lives once
and is unit-tested without a server. The selector matcher is what the fake uses to answer
`labelSelector`/`fieldSelector` the way the API server does (equality, set-based, existence), so
a shell tested against the fake filters exactly as it will in a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from crds import constants as c

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    """One REST resource: `group` "" is the core group (/api/v1)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


def path(
    resource: Resource,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The REST path of a collection (no name) or of one object, or of its subresource.

    A namespaced resource without a namespace is the cluster-wide collection (list and watch
    across namespaces); a cluster-scoped one ignores `namespace`.
    """
    base = f"/apis/{resource.group}/{resource.version}" if resource.group else "/api/v1"
    if resource.namespaced and namespace:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{resource.plural}"
    if name is None:
        if subresource:
            raise ValueError(f"subresource {subresource!r} needs an object name")
        return base
    base += f"/{quote(name, safe='')}"
    return f"{base}/{subresource}" if subresource else base


def object_key(obj: Mapping[str, Any]) -> str:
    """`namespace/name`, or `name` for cluster-scoped objects (client-go's MetaNamespaceKey)."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


def resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


# -- selectors ---------------------------------------------------------------------------------

# One clause of a label selector: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a)`, `k`, `!k`.
_SET = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s*\(([^)]*)\)\s*$")
_CMP = re.compile(r"^\s*([^\s!=(),]+)\s*(==|=|!=)\s*([^\s!=(),]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s*$")


def _clauses(selector: str) -> list[str]:
    """Split at the commas that are not inside `( )`."""
    clauses, depth, current = [], 0, ""
    for char in selector:
        if char == "," and depth == 0:
            clauses.append(current)
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current += char
    clauses.append(current)
    return [clause for clause in clauses if clause.strip()]


def _clause_matches(clause: str, values: Mapping[str, str]) -> bool:
    if found := _SET.match(clause):
        key, op, listed = found.groups()
        options = {v.strip() for v in listed.split(",") if v.strip()}
        return (values.get(key) in options) if op == "in" else (values.get(key) not in options)
    if found := _CMP.match(clause):
        key, op, value = found.groups()
        return (values.get(key) == value) if op in ("=", "==") else (values.get(key) != value)
    if found := _EXISTS.match(clause):
        negate, key = found.groups()
        return (key in values) != bool(negate)
    raise ValueError(f"unparsable selector clause {clause!r}")


def labels_match(selector: str, labels: Mapping[str, str] | None) -> bool:
    """Whether labels satisfy a label selector in the API server's syntax ("" matches all)."""
    return all(_clause_matches(clause, labels or {}) for clause in _clauses(selector))


def fields_match(selector: str, obj: Mapping[str, Any]) -> bool:
    """Field selectors as far as every resource serves them: metadata.name and .namespace."""
    meta = obj.get("metadata") or {}
    fields = {
        "metadata.name": str(meta.get("name", "")),
        "metadata.namespace": str(meta.get("namespace", "")),
    }
    for clause in _clauses(selector):
        found = _CMP.match(clause)
        if found is None or found.group(1) not in fields:
            raise ValueError(f"field selector {clause!r} is not supported")
        key, op, value = found.groups()
        if (fields[key] == value) != (op in ("=", "==")):
            return False
    return True


# -- the resources Nest's components use -------------------------------------------------------

CONFIGMAPS: Final = Resource("", "v1", "configmaps", "ConfigMap")
EVENTS: Final = Resource("", "v1", "events", "Event")
NAMESPACES: Final = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
PODS: Final = Resource("", "v1", "pods", "Pod")
SECRETS: Final = Resource("", "v1", "secrets", "Secret")
SERVICE_ACCOUNTS: Final = Resource("", "v1", "serviceaccounts", "ServiceAccount")
LEASES: Final = Resource("coordination.k8s.io", "v1", "leases", "Lease")
TOKEN_REVIEWS: Final = Resource(
    "authentication.k8s.io", "v1", "tokenreviews", "TokenReview", namespaced=False
)
SUBJECT_ACCESS_REVIEWS: Final = Resource(
    "authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview", namespaced=False
)

SANDBOXES: Final = Resource(c.GROUP, c.VERSION, c.SANDBOX_PLURAL, c.SANDBOX_KIND)
SANDBOX_REPLICASETS: Final = Resource(c.GROUP, c.VERSION, c.REPLICASET_PLURAL, c.REPLICASET_KIND)
SANDBOX_DEPLOYMENTS: Final = Resource(c.GROUP, c.VERSION, c.DEPLOYMENT_PLURAL, c.DEPLOYMENT_KIND)
SANDBOX_ENDPOINTS: Final = Resource(c.GROUP, c.VERSION, c.ENDPOINTS_PLURAL, c.ENDPOINTS_KIND)
SANDBOX_POOLS: Final = Resource(c.GROUP, c.VERSION, c.POOL_PLURAL, c.POOL_KIND, namespaced=False)

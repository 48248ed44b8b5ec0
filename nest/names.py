"""What parsing and printing need of the function vocabulary, without the pydantic models.

Why: building the `nest` parser and printing a table run on every command, and the models
(crds, nest_api.models) cost a few hundred milliseconds of imports (issue 14). The choices and
limits the parser shows and the revision rules the views apply live here, on plain values;
tests/unit/cli/test_light.py holds them equal to the models' own.
"""

from __future__ import annotations

from typing import Any

from crds.constants import REVISION_ANNOTATION, TEMPLATE_HASH_LABEL
from nest_api.revisions import owned_replicasets

# crds.Isolation and crds.Interface, in their order (the choices `nest deploy --help` lists).
ISOLATIONS = ("subprocess", "namespace")
INTERFACES = ("nest", "apigateway-v1", "apigateway-v2", "asgi", "wsgi")
# Inline code lives in the SandboxDeployment (and in every replica set and sandbox stamped from
# it); etcd objects stop at ~1.5 MiB, so anything near that belongs in a ConfigMap or at a URL.
MAX_INLINE_BYTES = 512 * 1024
OUTPUTS = ("table", "json", "yaml")


def revision_of(obj: dict[str, Any]) -> int | None:
    value = (obj.get("metadata", {}).get("annotations") or {}).get(REVISION_ANNOTATION)
    return int(value) if value is not None and str(value).isdigit() else None


def current_revision(deployment: dict[str, Any], replicasets: list[dict[str, Any]]) -> int | None:
    """The deployment's revision annotation, else its newest replica set's (as Deployments,
    a rollback re-numbers the restored replica set, so the newest is the current one)."""
    owned = [revision_of(rs) for rs in owned_replicasets(deployment, replicasets)]
    return revision_of(deployment) or max((r for r in owned if r is not None), default=None)


def current_hash(deployment: dict[str, Any], replicasets: list[dict[str, Any]]) -> str | None:
    """The template hash of the deployment's current revision, once the operator made it."""
    revision = current_revision(deployment, replicasets)
    for rs in owned_replicasets(deployment, replicasets):
        if revision_of(rs) == revision:
            labels: dict[str, str] = rs["metadata"].get("labels") or {}
            return labels.get(TEMPLATE_HASH_LABEL)
    return None

"""Which replica sets are a function's revisions, on plain dicts and without the models.

Why a module of its own: `nest describe` and `nest rollout status` need only these two rules,
and `nest_api.convert` imports the pydantic models, a cost the CLI's read-only commands do not
otherwise pay (issue 14). `convert` re-exports both, so its callers are unchanged.
"""

from __future__ import annotations

from typing import Any

from crds.constants import REVISION_ANNOTATION


def revision_of(obj: dict[str, Any]) -> int | None:
    """The revision annotation of a deployment or replica set; None when absent or not a number."""
    value = (obj.get("metadata", {}).get("annotations") or {}).get(REVISION_ANNOTATION)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def owned_replicasets(
    deployment: dict[str, Any], items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The replica sets a deployment owns (by UID), oldest revision first."""
    uid = deployment["metadata"].get("uid")
    owned = [
        rs
        for rs in items
        if any(ref.get("uid") == uid for ref in rs["metadata"].get("ownerReferences") or [])
        and revision_of(rs) is not None
    ]
    return sorted(owned, key=lambda rs: revision_of(rs) or 0)

"""Where Nest keeps per-user files: a build cache, and the state of the local development cluster.

The local cluster (the separate nest-cluster distribution: test and demo infrastructure, never
installed in production) writes its kubeconfig and its node's container logs under the state
directory. The `nest` command falls back to that kubeconfig when none is named and builds
function packages into the cache. Both read the locations here, so they agree while the product
never imports the cluster.
"""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def cache_dir() -> Path:
    """NEST_CACHE_DIR, else `$XDG_CACHE_HOME/nest`: builds kept across runs."""
    return Path(os.environ.get("NEST_CACHE_DIR") or _xdg("XDG_CACHE_HOME", ".cache") / "nest")


def conventional_state() -> Path:
    """The state directory of the user's local cluster when NEST_STATE_DIR names no other."""
    return _xdg("XDG_STATE_HOME", ".local/state") / "nest" / "cluster"


def state_dir() -> Path:
    """NEST_STATE_DIR, else the conventional one: the local cluster's state."""
    return Path(os.environ.get("NEST_STATE_DIR") or conventional_state())


def local_kubeconfig() -> Path:
    """The admin kubeconfig `nest cluster up` writes."""
    return state_dir() / "kubeconfig"

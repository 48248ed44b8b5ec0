"""Container logs of the local node: one file per container instance, found by `NS/POD[/C]`.

The runner writes a container's stdout and stderr to `<container>.log` and, on restart, moves the
previous instance's output to `<container>.previous.log` (what `kubectl logs --previous` would
show) once the new instance runs. `nest cluster logs` reads them straight from disk, so logs
work even when the API server is down.
"""

from __future__ import annotations

from pathlib import Path

from nest_cluster.errors import ClusterError
from nest_cluster.runner.layout import Layout, PodDir


def rotate(pod: PodDir, container: str) -> Path:
    """Keep the last instance's log as `.previous.log`; return the path for the new instance."""
    pod.logs.mkdir(parents=True, exist_ok=True)
    current = pod.log(container)
    if current.exists():
        current.replace(pod.log(container, previous=True))
    return current


def next_log(pod: PodDir, container: str) -> Path:
    """An empty log for an instance about to start. Starting takes a while (the shim sets up
    namespaces and cgroups), and until `promote` the container log still shows the previous
    instance's output, matching the status the pod still reports for it."""
    pod.logs.mkdir(parents=True, exist_ok=True)
    path = pod.logs / f"{container}.next.log"
    path.write_bytes(b"")
    return path


def promote(pod: PodDir, container: str) -> Path:
    """The started instance's log becomes the current one, the old one `.previous.log`."""
    rotate(pod, container)
    current = pod.log(container)
    (pod.logs / f"{container}.next.log").replace(current)
    return current


def log_file(state_dir: Path, ref: str) -> Path:
    """The log of `NAMESPACE/POD[/CONTAINER]` on the node rooted at `state_dir`."""
    parts = ref.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ClusterError(f"{ref!r}: expected NAMESPACE/POD or NAMESPACE/POD/CONTAINER")
    namespace, name = parts[0], parts[1]
    layout = Layout(state_dir)
    meta = layout.find(namespace, name)
    if meta is None:
        raise ClusterError(f"pod {namespace}/{name} is not running on the local node")
    if len(parts) == 3:
        container = parts[2]
        if container not in meta.containers:
            raise ClusterError(
                f"pod {namespace}/{name} has no container {container!r}"
                f" (containers: {', '.join(meta.containers)})"
            )
    elif len(meta.containers) == 1:
        container = meta.containers[0]
    else:
        raise ClusterError(
            f"pod {namespace}/{name} has several containers; name one:"
            f" {', '.join(f'{ref}/{c}' for c in meta.containers)}"
        )
    path = layout.pod(meta.uid).log(container)
    if not path.exists():
        raise ClusterError(f"container {container} of pod {namespace}/{name} has no log yet")
    return path

"""A function package: its dependency (humanize, from requirements.txt) ships as a layer.

`nest deploy examples/functions/packaged` builds the dependency layer with pip for the pool's
interpreter, pushes it and this code layer to the cluster's registry, and deploys the function by
digest; every function built on the same requirements shares the one layer in each pool pod.
"""

import humanize


def handler(event, context):
    size = int(event.get("bytes", 20 * 1024 * 1024))
    return {"bytes": size, "human": humanize.naturalsize(size, binary=True)}

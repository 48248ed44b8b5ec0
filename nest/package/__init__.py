"""Function packages: a directory with its requirements turned into content-addressed OCI layers.

`nest deploy DIR` builds a dependency layer (pip, for the pool's interpreter and platform) and a
code layer, pushes them as one artifact (format: `sandbox.layers`) and deploys a function whose
source is the artifact's digest. The decisions (which requirements, which wheel tags, which
files, the exact bytes of a layer) are plain functions in `requirements`, `target` and `tarball`;
`build` and `push` are the shells that run pip and talk to the registry.
"""

from nest.errors import NestError


class PackageBuildError(NestError):
    """A function package cannot be built or pushed; the message names what and why."""

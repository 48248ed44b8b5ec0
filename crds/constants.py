"""Names shared by every part of Nest: API group, kinds, plurals, labels, annotations, finalizers.

They live in one module so that the operator, the sidecar, the gateway and the CLI agree on the
exact strings; a typo in a label key silently breaks a server-side watch, so nobody spells these
out by hand. `crds` imports nothing else of Nest, which makes this module safe to import anywhere.
"""

from __future__ import annotations

from typing import Final

GROUP: Final = "nest.sandbox.dev"
VERSION: Final = "v1alpha1"
# Spelled out (not an f-string) so type checkers see a Literal for the models' apiVersion.
API_VERSION: Final = "nest.sandbox.dev/v1alpha1"
CATEGORY: Final = "nest"

SANDBOX_KIND: Final = "Sandbox"
SANDBOX_PLURAL: Final = "sandboxes"
SANDBOX_SINGULAR: Final = "sandbox"
SANDBOX_SHORT: Final = "sbx"

REPLICASET_KIND: Final = "SandboxReplicaSet"
REPLICASET_PLURAL: Final = "sandboxreplicasets"
REPLICASET_SINGULAR: Final = "sandboxreplicaset"
REPLICASET_SHORT: Final = "sbxrs"

DEPLOYMENT_KIND: Final = "SandboxDeployment"
DEPLOYMENT_PLURAL: Final = "sandboxdeployments"
DEPLOYMENT_SINGULAR: Final = "sandboxdeployment"
DEPLOYMENT_SHORT: Final = "sbxd"

ENDPOINTS_KIND: Final = "SandboxEndpoints"
ENDPOINTS_PLURAL: Final = "sandboxendpoints"
ENDPOINTS_SINGULAR: Final = "sandboxendpoints"
ENDPOINTS_SHORT: Final = "sbxep"

POOL_KIND: Final = "SandboxPool"
POOL_PLURAL: Final = "sandboxpools"
POOL_SINGULAR: Final = "sandboxpool"
POOL_SHORT: Final = "sbxpool"
# The pool a Sandbox asks for when spec.pool is unset; deploy/pool ships a SandboxPool of it.
DEFAULT_POOL: Final = "default"

# Pool pods carry this label (value: the SandboxPool's name), and the operator watches only pods
# with it; a pod is a node of that pool only if it also is in the pool's podNamespace and matches
# its podSelector. Bound Sandboxes carry it too, so a pool's sandboxes can be listed by label.
POOL_LABEL: Final = f"{GROUP}/pool"
# Set on a Sandbox at binding. Pod UIDs are unique forever while pod names are reused, so each
# sidecar watches `pod-uid=<own uid>` and never sees a sandbox bound to a previous pod of its name.
POD_UID_LABEL: Final = f"{GROUP}/pod-uid"
# Hash of a SandboxDeployment's template; names and selects the SandboxReplicaSet per revision.
TEMPLATE_HASH_LABEL: Final = f"{GROUP}/template-hash"
# Revision number of a SandboxReplicaSet (and its Deployment), as Deployments do.
REVISION_ANNOTATION: Final = f"{GROUP}/revision"
# The sidecar holds this finalizer on bound Sandboxes so they disappear only once really stopped.
SIDECAR_FINALIZER: Final = f"{GROUP}/sidecar"
# The Lease the operator's replicas elect their leader with, in the operator's namespace; no
# sidecar may write it, whatever its pod is called (admission.lease_verdict).
ELECTION_LEASE: Final = "nest-operator"

# A pool pod's declared capacity, overriding its runtime container's resources when set.
CAPACITY_MEMORY_ANNOTATION: Final = f"{GROUP}/capacity-memory"
CAPACITY_CPU_ANNOTATION: Final = f"{GROUP}/capacity-cpu"
MAX_SANDBOXES_ANNOTATION: Final = f"{GROUP}/max-sandboxes"
# Comma-separated isolation modes a pool pod supports (default: all).
ISOLATION_ANNOTATION: Final = f"{GROUP}/isolation"
# A pool pod with this annotation set to "true" takes no new sandboxes (kubectl cordon's analogue).
CORDON_ANNOTATION: Final = f"{GROUP}/cordoned"
# On a pool pod's Lease: JSON of its declared capacity, written when it changes (not per renewal).
CAPACITY_ANNOTATION: Final = f"{GROUP}/capacity"
# Compiled distributions as JSON list of "name==version" (PEP 503 names). On a pool pod's Lease:
# those its shared runtime has loaded (one version each per process). On a SandboxDeployment's
# template (so on its Sandboxes), set by `nest deploy` from the package config: those the function
# needs, so the scheduler can keep a namespace-mode sandbox off pods that loaded other versions.
NATIVE_DISTRIBUTIONS_ANNOTATION: Final = f"{GROUP}/native-distributions"
# On a Sandbox a SandboxDeployment made: the function (deployment) it is an instance of; the
# sidecar reports it to the code as context.function_name.
FUNCTION_LABEL: Final = f"{GROUP}/function"
# On a SandboxDeployment's build Jobs (and their pods): the deployment they build; the operator
# watches Jobs with it and deletes the superseded ones by it.
BUILD_LABEL: Final = f"{GROUP}/build"
# How long a Sandbox's passing phase (Pending, Scheduled, Starting) stands before it is written or
# listed: the sidecar's status manager writes it only after this, and the operator's endpoints
# leave a starting sandbox out for as long, so a start writes its endpoints once, at Ready.
PASSING_PHASE_HOLD_SECONDS: Final = 1.0

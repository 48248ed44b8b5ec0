"""Nest's function API: the flat requests platforms send and the views they get back
(`nest_api.models`), and the pure conversions between them and the four kinds
(`nest_api.convert`).

It is its own package because two components speak it: the gateway serves it over HTTP and the
CLI (`nest deploy`, `nest rollout`) builds the very same SandboxDeployments with it, so a
function deployed either way is the same object. It imports only `crds`, never the gateway, the
sidecar or the operator, and performs no I/O.
"""

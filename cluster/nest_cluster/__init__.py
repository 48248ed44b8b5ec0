"""The local development cluster: a real Kubernetes 1.20 control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler) run as local processes, an OCI registry, and a node whose
pods run as processes (`runner`, our kubelet stand-in).

It is test and demo infrastructure, not product: it ships as its own distribution (nest-cluster,
console entry `nest-cluster`, installed by scripts/bootstrap) and stays out of the product wheel
and image. It depends on the product (`nest`, `sandbox`); the product never imports it, and
`nest cluster ...` / `nest demo` reach it only as a separate process (nest/cluster_cmd.py).
"""

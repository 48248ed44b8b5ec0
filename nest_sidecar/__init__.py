"""The Nest sidecar: the kubelet of a pool pod, which runs the sandboxes bound to it."""

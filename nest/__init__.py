"""The `nest` command line and the local Kubernetes control plane it can bring up."""

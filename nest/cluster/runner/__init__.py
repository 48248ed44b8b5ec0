"""The local node's process runner (placeholder until the runner lands)."""

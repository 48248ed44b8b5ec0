"""nest_sidecar"""

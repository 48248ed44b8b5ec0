"""nest/cluster"""

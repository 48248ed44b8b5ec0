"""Benchmarks for the design's targets: `python -m bench NAME --json`.

Speed is measured here and only here (tests never assert timings). Every benchmark measures its
baselines in the same run, side by side, so a noisy machine moves both numbers together.
"""

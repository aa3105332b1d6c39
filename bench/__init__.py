"""Benchmarks of the Dreamcam step on a GPU (random weights, real architectures)."""

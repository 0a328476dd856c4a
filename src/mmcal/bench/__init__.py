"""Benchmarks (not tests): print items/s and the ratio to a baseline run in the same process."""

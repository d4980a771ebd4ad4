"""Benchmarks (not tests); run each from the repository root: ``python -m benchmarks.NAME``."""

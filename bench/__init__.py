"""Benchmarks: our jobs beside the methods they replace, measured in the same run."""

"""Benchmarks behind `mtp-edge bench`: per-method latency of every backend, the speculative loop, recipes, E2B-size slices, the clustered head."""

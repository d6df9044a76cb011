"""Benchmark harness of genesis_trio: ``python -m bench`` (see bench/README.md).

Each server runs in its own process pinned to core 0; the load generator
(bench/loadgen.c, compiled at run time) or our Python client runs pinned to
core 1. Results go to docs/benchmarks.md and docs/benchmarks.png.
"""

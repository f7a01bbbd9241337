"""Benchmarks: one module per measurement, each with `run(quick) -> dict` and `--quick` for CI.

`python -m bench.run_all` runs them all (each in its own process) and rewrites BENCHMARKS.md.
"""

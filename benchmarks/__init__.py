"""Benchmarks of the auth service (scripts, not CI tests). Run them from the repository root as
modules, e.g. `.venv/bin/python -m benchmarks.lease_throughput`; see benchmarks/README.md."""

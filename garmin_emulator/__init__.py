"""A stand-in for Garmin over real HTTP, for tests, benchmarks and the demo only.

Nothing in auth_service/, sync_worker/ or garmin_client/ imports it (an import-linter contract);
the demo imports it only when it runs. `python -m garmin_emulator --port N` serves it.
"""

"""What both the auth service and the sync worker need to talk to Garmin.

No gRPC server, no SQLAlchemy, no Prometheus: the worker installs and runs on this package,
the generated stubs (garmin_auth) and its own code alone (an import-linter contract).
"""

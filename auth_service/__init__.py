"""The garmin-auth gRPC service: owns the table of persisted Garmin sessions, signs users in,
keeps their tokens encrypted and fresh, and lends them to sync workers under fenced leases.

Layers (docs/ARCHITECTURE.md; enforced by import-linter, `.importlinter`): ``api`` (gRPC only)
over ``services`` (use cases, transactions) over ``domain`` (values, errors, ports; standard
library only); ``storage`` (SQLAlchemy) and ``upstream`` (Garmin providers) implement the
domain's ports. ``server`` is the composition root, ``cli`` the command line; ``config``,
``crypto``, ``tls``, ``metrics`` and ``checks`` are the process's settings, keys, certificates,
Prometheus metrics and ``check-config``.
"""

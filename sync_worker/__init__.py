"""The sync worker: leases users' Garmin sessions from the auth service and syncs their
activities into a directory or the worker's own PostgreSQL database.

Modules: ``cli`` (the ``garmin-sync-worker`` command), ``config`` (flags and environment),
``runner`` (the thread pool and exit codes), ``sync`` (one user's Load-Use-Update;
``activity_list`` reads Garmin's list),
``keeper`` (background lease renewal), ``control`` (stop, deadline, Garmin's pause),
``sinks`` (what a sink is) with ``directory_sink`` and ``postgres_sink``, ``client`` (the
typed gRPC client; ``client_errors``, ``lease_grants``), ``progress``.
"""

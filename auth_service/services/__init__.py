"""The use cases: one class per group of RPCs (connect, session_admin, leases, audit_log) and
the background housekeeping, each owning its transactions through one unit-of-work helper
(unit_of_work). They speak to storage and Garmin only through the domain's ports: no
SQLAlchemy, no grpc."""

"""What both the auth service and the sync worker need to talk to Garmin.

No gRPC server, no SQLAlchemy, no Prometheus: the worker installs and runs on this package,
the generated stubs (garmin_auth) and its own code alone (an import-linter contract).

* ``tokens``: Garmin's tokens for one user, as plain values.
* ``errors`` / ``answers``: Garmin's answers as errors, and how a failed call is classified.
* ``settings`` / ``env``: how to reach Garmin, and the environment reader both sides use.
* ``transport`` / ``retry`` / ``observe``: the HTTP adapter every request goes through (routing
  to ``*_UPSTREAM_URL``), the one retry layer, and the hook the service's metrics count with.
* ``endpoints``: Garmin's paths. No module here imports garth (the service's garth provider
  holds garth's isolation: auth_service.upstream.garth).
* ``connect_api``: Connect API GETs with an access token only (the worker's Garmin calls).
* ``user_ids``: the user-id rule; ``logging_setup``: JSON logs with redaction.
"""

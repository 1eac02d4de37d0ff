"""Alembic migrations of the auth service's database.

Installed as the `auth_service_migrations` package (see pyproject.toml) so that
`auth_service.storage.schema` finds them in editable and regular installs alike.
Run them through `auth_service.storage.schema`, which configures Alembic in code; the
top-level alembic.ini is only for authoring new revisions.
"""

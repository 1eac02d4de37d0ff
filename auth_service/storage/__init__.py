"""Storage with SQLAlchemy: models, engines, the database's clock, the repositories and the
unit of work that implement the domain's ports (auth_service.domain.repositories), the secret
box that seals what they store, and the operator's tools (schema migrations, key rotation,
audit pruning)."""

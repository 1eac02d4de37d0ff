"""The domain: values (models, views, audit, policies), errors, validation rules, page tokens
and the ports the use cases need (repositories for storage, ports for Garmin). Standard
library only: no SQLAlchemy, no grpc, nothing from storage or the composition root."""

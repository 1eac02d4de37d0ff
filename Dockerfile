# syntax=docker/dockerfile:1
#
# garmin-auth image: the gRPC auth service by default; the sync worker is in the same image
# (`docker run --entrypoint garmin-sync-worker IMAGE ...`).
#
#   docker build -t garmin-auth .
#   docker run -p 50051:50051 -e GARMIN_AUTH_DATABASE_URL=postgresql+psycopg://... \
#       -e GARMIN_AUTH_ENCRYPTION_KEYS=... garmin-auth
#
# The generated gRPC stubs are committed under protos/, and the Alembic migrations are
# installed as the auth_service_migrations package, so the runtime stage needs nothing but the
# venv: no protoc, no source tree, no alembic.ini.

FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY auth_service ./auth_service
COPY sync_worker ./sync_worker
COPY garmin_client ./garmin_client
COPY migrations ./migrations
# pyproject.toml lists every package of the repository, the Garmin emulator among them (tests,
# benchmarks and the demo need it installed), so the build needs its source too.
COPY garmin_emulator ./garmin_emulator
# A regular (non-editable) install of the project and its pinned dependencies; every
# dependency is a wheel, so no compiler is needed. Then the emulator is deleted: the product
# never runs it, so the image does not ship it (rm fails the build if it is not found there).
RUN pip install --no-cache-dir . \
    && rm -r /opt/venv/lib/python3.11/site-packages/garmin_emulator \
    && python -m compileall -q /opt/venv/lib


FROM python:3.11-slim AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GARMIN_AUTH_LISTEN=0.0.0.0:50051

# The service runs as an unprivileged user (numeric uid/gid 10001, so a runtime can verify
# it is not root). The venv stays root-owned and read-only to it.
RUN groupadd --system --gid 10001 garmin \
    && useradd --system --uid 10001 --gid garmin --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin garmin \
    && mkdir /data \
    && chown 10001:10001 /data

COPY --from=builder /opt/venv /opt/venv

# The working directory is the one place the user may write (e.g. the default SQLite file
# when GARMIN_AUTH_DATABASE_URL is unset; use PostgreSQL in production).
WORKDIR /data
USER 10001:10001
EXPOSE 50051

ENTRYPOINT ["garmin-auth-service"]
CMD ["serve"]

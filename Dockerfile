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
#
# Supply chain: the base image is pinned by digest (the multi-platform index of
# python:3.11-slim-bookworm, Python 3.11.16, published 2026-08-25), so a rebuild gets the same
# bytes whatever the tag points at today. To move to a newer base, read the index digest of the
# tag (`docker buildx imagetools inspect python:3.11-slim-bookworm`, the "Digest:" line) and
# replace the one below. Every Python package comes from requirements/*.lock with its sha256
# (pip --require-hashes); regenerate the locks with scripts/lock.

FROM python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b AS python


FROM python AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY requirements/build.lock requirements/runtime.lock ./requirements/
# Two venvs: /opt/build holds pip and the build backend (setuptools, wheel) that builds the
# project's wheel; /opt/venv, the one the image ships, holds the runtime dependencies and that
# wheel only (no pip, no setuptools: /opt/build's pip installs into it). Every dependency is a
# hash-checked wheel (--only-binary), so nothing is compiled and no unpinned build tool is
# downloaded. This layer changes only when a lock does.
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --only-binary :all: \
        -r requirements/build.lock \
    && python -m venv --without-pip /opt/venv \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-cache-dir \
        --require-hashes --only-binary :all: -r requirements/runtime.lock

COPY pyproject.toml README.md ./
COPY protos ./protos
COPY auth_service ./auth_service
COPY sync_worker ./sync_worker
COPY garmin_client ./garmin_client
COPY migrations ./migrations
# pyproject.toml lists every package of the repository, the Garmin emulator among them (tests,
# benchmarks and the demo need it installed), so the build needs its source too.
COPY garmin_emulator ./garmin_emulator
# The project's wheel, built by the pinned backend without build isolation, installed without
# dependencies (the lock installed them). Then the emulator is deleted: the product never runs
# it, so the image does not ship it (rm fails the build if it is not found there).
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /wheels . \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-cache-dir --no-deps \
        /wheels/garmin_auth-0.1.0-py3-none-any.whl \
    && rm -r /opt/venv/lib/python3.11/site-packages/garmin_emulator \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib


FROM python AS runtime

# SSL_CERT_FILE: psycopg-binary bundles its own OpenSSL, whose default CA location
# (/usr/lib/psycopg-openssl) does not exist; libpq's sslrootcert=system (the example database
# URL in deploy/) then trusts no CA at all. Point it at Debian's store.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    GARMIN_AUTH_LISTEN=0.0.0.0:50051 \
    GARMIN_AUTH_HEALTH_LISTEN=0.0.0.0:8081

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
# 50051: the gRPC API (TLS when GARMIN_AUTH_TLS_CERT/_KEY are set); 8081: the plaintext
# health-only listener (grpc.health.v1, services "liveness" and "readiness").
EXPOSE 50051 8081

# For `docker run` and Compose: the process answers on its health listener. Kubernetes ignores
# HEALTHCHECK and uses the manifests' gRPC probes on the same port instead. A container started
# with another entrypoint (the sync worker) serves no health listener and shows as unhealthy;
# nothing acts on that.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["garmin-auth-service", "health-check", "--service", "liveness"]

ENTRYPOINT ["garmin-auth-service"]
CMD ["serve"]

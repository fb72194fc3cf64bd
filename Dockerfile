# syntax=docker/dockerfile:1
# The image of ANY service of the secured order workflows: one uv workspace member and
# orders-shared, nothing else (no ops package, no other service, no pip, uv or pytest).
# Build from the REPOSITORY ROOT (the uv workspace), naming the member:
#   docker build -t orders-validate \
#     --build-arg PACKAGE=orders-validate --build-arg SOURCE=services/validate \
#     --build-arg ENTRYPOINT=orders-validate-worker --build-arg PORT=9464 .
# `make images` builds all seven this way (ops/src/orders_ops/images.py). A team that
# needs its own build adds services/<svc>/Dockerfile (start it with the two BASE_IMAGE
# lines below); `make images` and Tilt then use that file for that service.
# Plain Dockerfile syntax only (no RUN --mount): the legacy builder and BuildKit both
# build it unchanged.
#
# Base image pinned by digest: python:3.11-slim (Docker Official Image, multi-arch
# index digest). Renovate/Dependabot bump it; see docs/deployment.md. Where no registry
# can be reached, `make images` passes BASE_IMAGE=orders-base:local (Debian's python3).
ARG BASE_IMAGE=python:3.11-slim@sha256:9358444059ed78e2975ada2c189f1c1a3144a5dab6f35bff8c981afb38946634
# checkov:skip=CKV_DOCKER_7:the base is the BASE_IMAGE argument, pinned by digest by default (tests/deploy checks the pin)
FROM ${BASE_IMAGE} AS base

# --- build: the locked dependency set of one workspace member, installed into /opt/venv
# by the app user (so the dev target below needs no copy of it). Build arguments come
# after the steps every image shares: the legacy builder keys a RUN on the arguments
# declared before it, and those steps are then built once for all images.
FROM base AS build
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3 \
    UV_PROJECT_ENVIRONMENT=/opt/venv
# uv in a throw-away venv of its own: it never reaches the runtime stage
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir uv==0.13.9 \
    && echo "orders:x:10001:10001::/nonexistent:/usr/sbin/nologin" >> /etc/passwd \
    && echo "orders:x:10001:" >> /etc/group \
    && mkdir /opt/venv && chown 10001:10001 /opt/venv
WORKDIR /src
# third-party dependencies first, exactly as locked (this layer is reused until uv.lock
# or the root pyproject.toml changes)
COPY pyproject.toml uv.lock ./
USER 10001:10001
ARG PACKAGE
ARG SOURCE
ARG ENTRYPOINT
RUN test -n "${PACKAGE}" -a -n "${SOURCE}" -a -n "${ENTRYPOINT}" \
    || { echo "build args PACKAGE, SOURCE and ENTRYPOINT are required (see the top of this file)" >&2; exit 1; }; \
    /opt/uv/bin/uv sync --frozen --no-dev --no-install-workspace --package "${PACKAGE}"
# then orders-shared and this member only, not editable; the entry point under a fixed name
COPY shared/ shared/
COPY ${SOURCE}/ ${SOURCE}/
RUN /opt/uv/bin/uv sync --frozen --no-dev --no-editable --package "${PACKAGE}" \
    && test -x "/opt/venv/bin/${ENTRYPOINT}" \
    && ln -s "${ENTRYPOINT}" /opt/venv/bin/orders-entrypoint

# --- dev: the build stage run as the app user, who owns /opt/venv, so Tilt's live_update
# can sync code into it. It still holds uv and the sources: only Tilt builds this target;
# the default target is `runtime` below.
FROM build AS dev
ARG PORT=9464
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE ${PORT}
ENTRYPOINT ["/opt/venv/bin/orders-entrypoint"]

# --- runtime (default target): no build tools, no pip or uv, code owned by root (read-only)
FROM base AS runtime
# checkov:skip=CKV_DOCKER_2:Kubernetes probes the HTTP health endpoints (the bootstrap Job: its exit code); Docker HEALTHCHECK is ignored there
# the official python image ships pip in its interpreter: nothing installs at run time
RUN if python3 -m pip --version >/dev/null 2>&1; then \
        python3 -m pip uninstall --no-cache-dir --yes --quiet pip setuptools wheel; fi \
    && echo "orders:x:10001:10001::/nonexistent:/usr/sbin/nologin" >> /etc/passwd \
    && echo "orders:x:10001:" >> /etc/group
COPY --from=build --chown=0:0 /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
ARG PACKAGE
ARG PORT=9464
LABEL org.opencontainers.image.title="${PACKAGE}" \
      org.opencontainers.image.description="${PACKAGE} of the secured order workflows"
USER 10001:10001
EXPOSE ${PORT}
ENTRYPOINT ["/opt/venv/bin/orders-entrypoint"]

# syntax=docker/dockerfile:1
#
# gr-s2s-consumer image: a builder stage makes wheels (the project's and its
# pinned runtime dependencies from requirements.lock) and installs them into
# a virtualenv; the runtime stage, on the same Python base, copies only that
# virtualenv and runs as a non-root numeric user.
#
#   docker build -t gr-s2s-consumer:0.1.0 .
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=broker:9092 -e GR_API_KEY=... \
#       gr-s2s-consumer:0.1.0 check-config
#
# No HEALTHCHECK: Kubernetes ignores it; the chart's probes call /healthz and
# /readyz on port 8080.
# checkov:skip=CKV_DOCKER_2: Kubernetes ignores HEALTHCHECK; liveness/readiness probes live in the Helm chart

# One pinned base for both stages: the virtualenv built in the first is only
# valid on the same Python in the second. The tag names the Python release;
# the digest fixes the image itself (the tag is rebuilt whenever Debian is
# patched), so a build gets exactly that image or fails. Move both together:
# scripts/base-digest.sh (docs/deploy.md, "The base image"). The digest is a
# build argument so that a build on a stand-in base (no registry reachable)
# can name the stand-in's own digest; a digest that is not there fails.
ARG PYTHON_BASE_DIGEST=sha256:0a310eeecf4e1f5a0743f9a6520c90c88d089c903ca5fd283f501e3a805f5f89
FROM python:3.11.17-slim-bookworm@${PYTHON_BASE_DIGEST} AS base


FROM base AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when the lock
# files change, not on every source edit. Every artifact is checked against
# the sha256 its lock pins (--require-hashes), here and again at install.
COPY requirements.lock requirements-build.lock ./
RUN python -m pip download --no-cache-dir --require-hashes --dest /wheels -r requirements.lock
# The build backend (hatchling and what it needs), from its own hashed lock,
# in a virtualenv of its own that never reaches the runtime stage.
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir --require-hashes -r requirements-build.lock

# Then the project's own wheel, built with that backend and nothing else:
# --no-build-isolation, so pip fetches no build requirement of its own.
COPY pyproject.toml README.md ./
COPY consumer ./consumer
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation \
        --wheel-dir /wheels/project . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels \
        --require-hashes -r requirements.lock \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /wheels/project/*.whl \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && /opt/venv/bin/gr-consumer --help >/dev/null


FROM base AS runtime

LABEL org.opencontainers.image.title="gr-s2s-consumer" \
      org.opencontainers.image.description="Forwards game events from Kafka to the GameRebellion S2S API" \
      org.opencontainers.image.licenses="Apache-2.0"

# A system user with a fixed numeric id: the chart's securityContext
# (runAsUser/runAsGroup 10001, runAsNonRoot) matches it.
RUN groupadd --system --gid 10001 gr \
 && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin gr

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GR_HTTP_PORT=8080

USER 10001:10001
EXPOSE 8080

# Exec form: gr-consumer is PID 1 and receives SIGTERM itself (it drains,
# commits and leaves the group within GR_SHUTDOWN_TIMEOUT_S).
ENTRYPOINT ["gr-consumer"]
CMD ["run"]

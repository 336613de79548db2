# syntax=docker/dockerfile:1
#
# embmon's image: `embmon run` as a non-root user, settings from a mounted file.
#
#   docker build -t embmon:0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#
# In Kubernetes (the Helm chart): the settings file is a ConfigMap at /etc/embmon/embmon.yaml,
# the window store a volume at /var/lib/embmon (`out`), a fetched reference an emptyDir at
# /var/lib/embmon-reference (init container `embmon reference fetch ... --out` that path),
# /tmp an emptyDir; the root filesystem is read-only. /healthz and /readyz on 9808 are the
# probes, so the image has no HEALTHCHECK.

# The Python the project's venv and CI run (pyproject: requires-python >= 3.11). Both stages
# use the same image: the venv's interpreter is the base image's /usr/local/bin/python3.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: the project's wheel and its runtime dependencies in /opt/venv ----------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps everything else out of the context).
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY sketches ./sketches
COPY exporters ./exporters
COPY demo ./demo
# A venv without pip: the base image's pip installs into it from outside. Dependencies come as
# binary wheels only (there is no compiler here, nor in the final image); no extras (dev,
# demo, report, parquet) are installed. pip compiles the .pyc files: the final root filesystem
# is read-only, so nothing could write them there.
RUN python -m venv --without-pip /opt/venv \
 && pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && pip --python /opt/venv/bin/python install --only-binary=:all: /tmp/wheels/embmon-*.whl \
 && /opt/venv/bin/embmon --help > /dev/null

# --- final: the venv on the same slim base, nothing else ------------------------------------
FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="embmon" \
      org.opencontainers.image.description="Streaming embedding-drift agent: Kafka in, mergeable DataSketches per window, calibrated drift to Prometheus." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# No installer left behind (the venv has none either), and the two data directories owned by
# the user the agent runs as, for a `docker run` without volumes. In Kubernetes volumes are
# mounted over them (fsGroup 10001 makes them writable).
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
 && mkdir -p /var/lib/embmon /var/lib/embmon-reference \
 && chown 10001:10001 /var/lib/embmon /var/lib/embmon-reference

COPY --from=builder /opt/venv /opt/venv

# Settings come from the mounted file and EMBMON_* variables (variables override the file,
# flags override both). The image sets no EMBMON_* setting itself: one here would silently
# override the mounted file. HOME is /tmp: the only writable place besides the data volume.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    EMBMON_CONFIG=/etc/embmon/embmon.yaml

# `out` defaults to a directory relative to here: on the data volume either way.
WORKDIR /var/lib/embmon
USER 10001:10001
EXPOSE 9808
# Exec form: embmon is PID 1 and gets SIGTERM itself (it finishes the turn, persists, exits 0).
ENTRYPOINT ["embmon", "run"]

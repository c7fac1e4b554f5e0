# syntax=docker/dockerfile:1
# smartflow-streams image: one image, three entry points (docs/deploy.md):
#   worker (default)  faust -A smartflow_streams worker -l info
#   relay             smartflow-relay
#   CLI               smartflow schema | status | dead ... | config
# Build: docker build -t smartflow-streams .
# Dependencies are installed from requirements.lock (every package pinned, generated from pyproject.toml's pins),
# in a build stage; the final stage has no compiler, no pip cache and runs as an unprivileged user.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Build tools only here: a dependency without a wheel for this platform is compiled in this stage. Not pinned to a
# Debian version on purpose: the base tag's Debian release decides which build-essential exists.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.lock ./
RUN pip install --no-deps -r requirements.lock
COPY pyproject.toml README.md config.py ./
COPY smartflow_streams ./smartflow_streams
COPY agents ./agents
COPY tables ./tables
COPY outbox_relay ./outbox_relay
RUN pip install --no-deps . \
    && pip check

FROM python:3.11-slim AS runtime
LABEL org.opencontainers.image.title="smartflow-streams" \
      org.opencontainers.image.description="Transactional outbox relay and Faust workers for SmartFlow"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SMARTFLOW_WORKER__WEB_HOST=0.0.0.0 \
    SMARTFLOW_WORKER__WEB_PORT=6066 \
    SMARTFLOW_WORKER__DATADIR=/var/lib/smartflow/faust \
    SMARTFLOW_RELAY__METRICS_HOST=0.0.0.0 \
    SMARTFLOW_RELAY__METRICS_PORT=6067
RUN groupadd --system --gid 10001 smartflow \
    && useradd --system --uid 10001 --gid smartflow --home-dir /var/lib/smartflow --create-home smartflow
COPY --from=build /opt/venv /opt/venv
WORKDIR /var/lib/smartflow
USER 10001:10001
EXPOSE 6066 6067
# The worker's web /health (the relay's is on 6067: compose.yaml and the Kubernetes manifests override this check).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SMARTFLOW_WORKER__WEB_PORT', '6066'), timeout=4)"]
CMD ["faust", "-A", "smartflow_streams", "worker", "-l", "info"]

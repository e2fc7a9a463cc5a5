# One image for every Conveyor process: api (the default command), worker, relay, migrate.
# Configuration comes from the environment at run time; nothing secret is baked in.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtualenv with the dependencies, then the app ----------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build

# Dependencies get a layer of their own, keyed on pyproject.toml alone: editing the code does
# not reinstall them. The list is read from pyproject.toml so it is written in one place.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install --requirement requirements.txt

COPY README.md ./
COPY src ./src
RUN pip install --no-deps . \
    && pip uninstall --yes pip \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# --- runtime: the virtualenv on a clean slim base, run as an unprivileged user ----------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="conveyor" \
      org.opencontainers.image.description="FastAPI + Dramatiq background jobs with a ledger and an outbox"

# A fixed numeric uid, so orchestrators that insist on runAsNonRoot can check it.
RUN groupadd --system --gid 10001 conveyor \
    && useradd --system --uid 10001 --gid conveyor --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin conveyor

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOG_FORMAT=json

WORKDIR /app
USER 10001:10001

# 8000: the HTTP API. 9191: the worker's Prometheus exporter (WORKER_METRICS_PORT).
EXPOSE 8000 9191

# For the default command (the API). docker-compose.yml gives the worker its own check.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["conveyor", "health", "--component", "api"]

CMD ["conveyor", "api", "--host", "0.0.0.0", "--port", "8000"]

# Fusion Engine gateway image.
#
#   docker build -t fusion-engine .
#   docker run -p 8000:8000 -e OPENROUTER_API_KEY=sk-or-... -e FUSION_SERVER_API_KEYS=key1 fusion-engine
#
# The image binds 0.0.0.0, and `fusion serve` refuses a non-loopback address without bearer keys:
# pass FUSION_SERVER_API_KEYS (or, for a private network only, FUSION_ALLOW_NO_AUTH=1). Keys always
# come from the environment at run time, never from the image.

# Builds with the legacy builder as well as BuildKit: no `# syntax=` line (BuildKit would fetch
# that frontend from Docker Hub, and fail offline). `make image` builds it as fusion-engine:local.

# --- builder: the project and its server and otel extras in a venv, from wheels -------------------
FROM python:3.11-slim AS builder
# Marks this stage's images (kept untagged as build cache) so `make image` can drop stale ones.
LABEL org.fusion-engine.stage=builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies come as binary wheels only (no compiler in either stage); the project itself is
# pure Python and is built by hatchling in pip's throwaway build environment.
# (`./[server,otel]` is this directory with its extras: the versions are bounded in
# pyproject.toml. `otel` lets a container turn tracing on with OTEL_EXPORTER_OTLP_ENDPOINT alone;
# it is imported only then, so a container without it set pays disk space, not CPU.)
COPY pyproject.toml README.md ./
COPY src/ src/
COPY panels/ panels/
COPY judges/ judges/
# Then the venv loses what only installing or testing needs, so the runtime stage copies a lean
# one: pip, setuptools and wheel, and polyfactory with Faker (25 MB), which litestar requires
# but imports only for OpenAPI examples (OpenAPIConfig.create_examples, off in this app). The
# import check fails the build if the app ever needs them.
RUN pip install --no-cache-dir --only-binary=:all: "./[server,otel]" \
    && pip uninstall --yes polyfactory faker \
    && python -c "import fusion_engine.server.app, fusion_engine.otel_traces, gunicorn.app.base, uvicorn_worker" \
    && pip uninstall --yes setuptools wheel pip

# --- runtime ---------------------------------------------------------------------------------------
FROM python:3.11-slim

# The home directory is /tmp, the one writable place under a read-only root filesystem:
# gunicorn puts its control socket in $HOME/.gunicorn/ (it logs an error when it cannot).
RUN groupadd --system --gid 10001 fusion \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin fusion

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
COPY panels/ /app/panels/
COPY judges/ /app/judges/
COPY config/ /app/config/
# The prometheus-client multiprocess directory must exist and be writable by the workers
# (Kubernetes mounts an emptyDir here so the root filesystem can stay read-only).
RUN install -d -o fusion -g fusion -m 0750 /tmp/prometheus

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FUSION_HOST=0.0.0.0 \
    FUSION_PORT=8000 \
    FUSION_PANELS_DIR=/app/panels \
    FUSION_JUDGES_DIR=/app/judges \
    FUSION_CONFIG=/app/config/gateway.yaml \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus

USER 10001:10001
EXPOSE 8000

# python:3.11-slim has no curl: urllib fails (exit 1) on a refused connection or a non-2xx reply.
# The port is the one the gateway serves on: FUSION_PORT as the container runs (`-e FUSION_PORT=`).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('FUSION_PORT', '8000') + '/health', timeout=4)"]

ENTRYPOINT ["fusion", "serve"]

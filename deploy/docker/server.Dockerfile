# syntax=docker/dockerfile:1
# The CPU server image: the base install (onnxruntime, grpcio, ...) and the otel extra
# (OpenTelemetry traces, off unless --otlp-endpoint is set), no TensorFlow.
# Build from the repository root:
#   docker build -f deploy/docker/server.Dockerfile -t fashion-serving:0.1.0 .
# The model repository is NOT in the image: mount it at /models (see deploy/README.md).
# BASE_IMAGE: any Debian bookworm image with Python 3.11 on PATH as `python` (the tests
# build on a local stand-in, since they cannot pull from a registry).

ARG BASE_IMAGE=python:3.11-slim-bookworm

# The pinned requirements, extracted from pyproject.toml in a stage of their own: the install
# layer below is cached on this file's content, so neither a source edit nor a change to
# another part of pyproject.toml (dev tools, comments) reinstalls them.
FROM ${BASE_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["otel"]))' \
      > requirements.txt

FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY --from=requirements /src/requirements.txt ./
RUN pip install -r requirements.txt

# The project itself, into a prefix of its own (console scripts point at /opt/venv/bin/python):
# the image gets it as a small layer on top of the cached dependencies.
FROM deps AS build
COPY pyproject.toml README.md ./
COPY server ./server
COPY client ./client
RUN pip install --no-deps --prefix=/opt/project . \
 && test -d /opt/project/lib/python3.11/site-packages/server \
 && PYTHONPATH=/opt/project/lib/python3.11/site-packages pip check

# pip and setuptools are not needed at run time (-24 MB).
FROM deps AS runtime-deps
RUN python -m pip uninstall -y pip setuptools

FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 fashion \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin fashion
COPY --from=runtime-deps /opt/venv /opt/venv
COPY --from=build /opt/project/ /opt/venv/
# FASHION_* defaults for a container: bind every interface (probes reach the pod IP)
# and read the mounted model repository. The Kubernetes ConfigMap sets them too.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FASHION_HOST=0.0.0.0 \
    FASHION_MODEL_REPO=/models
# Numeric, so Kubernetes can verify runAsNonRoot.
USER 10001:10001
WORKDIR /tmp
# gRPC, REST (the Open Inference Protocol over HTTP), metrics.
EXPOSE 50051 8000 9090
# Exec form: fashion-serve is PID 1 and receives SIGTERM itself (graceful drain).
ENTRYPOINT ["fashion-serve"]

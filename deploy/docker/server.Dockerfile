# syntax=docker/dockerfile:1
# The CPU server image: the base install only (onnxruntime, grpcio, ...), no TensorFlow.
# Build from the repository root:
#   docker build -f deploy/docker/server.Dockerfile -t fashion-serving:0.1.0 .
# The model repository is NOT in the image: mount it at /models (see deploy/README.md).

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY client ./client
# A regular (non-editable) install: the final stage needs only /opt/venv. pip and
# setuptools are not needed at run time (-24 MB).
RUN pip install . && pip check && python -m pip uninstall -y pip setuptools

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 fashion \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin fashion
COPY --from=build /opt/venv /opt/venv
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
EXPOSE 50051 9090
# Exec form: fashion-serve is PID 1 and receives SIGTERM itself (graceful drain).
ENTRYPOINT ["fashion-serve"]

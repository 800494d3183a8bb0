# syntax=docker/dockerfile:1
# The training image: the `train` extra (TensorFlow, Keras, tf2onnx) and the Fashion-MNIST
# data set from Debian's dataset-fashion-mnist, so the Job needs no internet.
# `fashion-train` publishes a new version into the repository mounted at /models.
#   docker build -f deploy/docker/trainer.Dockerfile -t fashion-trainer:0.1.0 .

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY client ./client
COPY training ./training
# The versions are pinned in pyproject.toml (a local path with an extra, not a registry name).
# hadolint ignore=DL3013
RUN pip install ".[train]" && pip check

FROM python:3.11-slim-bookworm
# The four IDX files land in /usr/share/datasets/fashion-mnist/ (training/data.py looks there).
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 fashion \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin fashion
COPY --from=build /opt/venv /opt/venv
# Keras and matplotlib write caches under $HOME: point them at the writable /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=1 \
    FASHION_MODEL_REPO=/models
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["fashion-train"]

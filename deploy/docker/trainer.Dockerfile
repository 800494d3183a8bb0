# syntax=docker/dockerfile:1
# The training image: the `train` extra (TensorFlow, Keras, tf2onnx) and the Fashion-MNIST
# data set from Debian's dataset-fashion-mnist, so the Job needs no internet.
# `fashion-train` publishes a new version into the repository mounted at /models.
#   docker build -f deploy/docker/trainer.Dockerfile -t fashion-trainer:0.1.0 .
# BASE_IMAGE: any Debian bookworm image with Python 3.11 on PATH as `python` (the tests
# build on a local stand-in, since they cannot pull from a registry).

ARG BASE_IMAGE=python:3.11-slim-bookworm

# The pinned requirements, extracted from pyproject.toml in a stage of their own: the install
# layer below is cached on this file's content, so neither a source edit nor a change to
# another part of pyproject.toml (dev tools, comments) reinstalls them (TensorFlow: minutes).
FROM ${BASE_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["train"]))' \
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
# the image gets it as a small layer on top of the cached 2.5 GB of dependencies.
FROM deps AS build
COPY pyproject.toml README.md ./
COPY server ./server
COPY client ./client
COPY training ./training
RUN pip install --no-deps --prefix=/opt/project . \
 && test -d /opt/project/lib/python3.11/site-packages/server \
 && PYTHONPATH=/opt/project/lib/python3.11/site-packages pip check

# On top of the dependencies' layers rather than copying them (2.5 GB): a source edit then
# rebuilds only the project's layer.
FROM deps
# The four IDX files land in /usr/share/datasets/fashion-mnist/ (training/data.py looks there).
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 fashion \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin fashion
COPY --from=build /opt/project/ /opt/venv/
# Keras and matplotlib write caches under $HOME: point them at the writable /tmp.
# ORT_DISABLE_TELEMETRY: the export's parity check imports onnxruntime, whose telemetry
# (uploads) is on by default from 1.29; the Job needs no egress.
ENV PATH=/opt/venv/bin:$PATH \
    ORT_DISABLE_TELEMETRY=1 \
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

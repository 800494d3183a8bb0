# syntax=docker/dockerfile:1
# The GPU server image: onnxruntime-gpu 1.31.1 (CUDA 13 + cuDNN 9) INSTEAD of onnxruntime.
# The CUDA and cuDNN runtime libraries come from the NVIDIA pip wheels pulled by the
# [cuda,cudnn] extras; only the driver comes from the node (NVIDIA container toolkit,
# driver >= 580). The otel extra (traces, off unless --otlp-endpoint is set). No TensorFlow.
#   docker build -f deploy/docker/server-gpu.Dockerfile -t fashion-serving-gpu:0.1.0 .
#   docker run --gpus 1 -v "$PWD/models:/models:ro" -p 50051:50051 fashion-serving-gpu:0.1.0
# BASE_IMAGE: any Debian bookworm image with Python 3.11 on PATH as `python`.

ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY client ./client
# onnxruntime and onnxruntime-gpu share one package directory: never both at once.
# DL3013: ".[otel]" is this project; its pins (the otel extra's too) are in pyproject.toml.
# pip check matches names, so it reports the onnxruntime this project requires and the GPU
# build replaces: that one line is expected, any other broken requirement fails the build.
# hadolint ignore=DL3013
RUN pip install ".[otel]" \
 && pip uninstall -y onnxruntime \
 && pip install "onnxruntime-gpu[cuda,cudnn]==1.31.1" \
 && { pip check > /tmp/pip-check || true; } \
 && ! grep -v -x -e "No broken requirements found." -e "fashion-serving [^ ]* requires onnxruntime, which is not installed." /tmp/pip-check \
 && python -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers()" \
 && python -m pip uninstall -y pip setuptools

FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 fashion \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin fashion
COPY --from=build /opt/venv /opt/venv
# Put the pip-installed CUDA/cuDNN libraries on the loader's path once, at build time,
# so onnxruntime's CUDA provider finds them without LD_LIBRARY_PATH or preload_dlls().
RUN find /opt/venv/lib/python3.11/site-packages/nvidia -type d -name lib \
      > /etc/ld.so.conf.d/nvidia-pip-wheels.conf \
 && ldconfig
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    FASHION_HOST=0.0.0.0 \
    FASHION_MODEL_REPO=/models
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 8000 9090
ENTRYPOINT ["fashion-serve"]
# `--device cuda` refuses to start rather than fall back to CPU silently. Kubernetes'
# `command` replaces ENTRYPOINT and CMD: the gpu overlay sets FASHION_DEVICE=cuda instead.
CMD ["--device", "cuda"]

# syntax=docker/dockerfile:1
# The samserve services: one image, two commands (`samserve embedding`, `samserve decoder`).
# Build from the repository root (docker/samserve.Dockerfile.dockerignore applies):
#   docker build -f docker/samserve.Dockerfile -t samserve/samserve:0.1.0 .
# No weights are downloaded at build or run time: tiny's shipped weights are package data,
# official checkpoints come from a volume (SAMSERVE_CHECKPOINT=/checkpoints/...).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, the CPU build: the services run the prompt encoder and mask decoder on CPU (the
# image encoder runs on Triton). The versions the Makefile pins.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY clients/python /src/clients/python
COPY pyproject.toml README.md /src/
COPY services /src/services
# Not editable: the runtime stage gets site-packages only, never the sources. tritonclient is
# what the embedding service's Triton encoder needs (the "triton" extra would also pull the
# whole tritonserver binary). The "sam2" extra serves SAM 2.1 models (sam2's CUDA extension
# is for video only: not built).
RUN SAM2_BUILD_CUDA=0 pip install "/src/clients/python[rle]" "/src[sam2,onnx]" "tritonclient[grpc]>=2.73,<3"

FROM ${PYTHON_IMAGE} AS runtime
# tini as PID 1: forwards SIGTERM to samserve (which drains) and reaps children.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 samserve \
    && useradd --system --uid 10001 --gid samserve --home-dir /tmp \
        --shell /usr/sbin/nologin samserve
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
# Numeric, so Kubernetes can verify runAsNonRoot without looking the name up.
USER 10001:10001
EXPOSE 50051 50052 9101 9102
ENTRYPOINT ["/usr/bin/tini", "--", "samserve"]
CMD ["--help"]

# syntax=docker/dockerfile:1
# Triton Inference Server with the SAM image encoder (python backend): the official Triton
# image plus torch, segment_anything, samserve (model.py builds the encoder with samserve's
# loader) and triton_models/ at /opt/samserve/triton_models. The Deployment's init container
# copies the one configured variant into the model repository Triton serves (model control
# mode none loads everything it finds). Build from the repository root:
#   docker build -f docker/triton.Dockerfile -t samserve/samserve-triton:0.1.0 .
# CPU-only (dev) build, much smaller: add
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# No weights in the image: the vit_* configs read /checkpoints (a volume).

# 24.12 and later: Ubuntu 24.04 with Python 3.12, which samserve supports (>= 3.11).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.12-py3
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

# Wheels of the two samserve distributions, built without the sources reaching the final image.
FROM ${PYTHON_IMAGE} AS wheels
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY clients/python /src/clients/python
COPY pyproject.toml README.md /src/
COPY services /src/services
RUN pip wheel --no-deps --wheel-dir /wheels /src/clients/python /src

FROM ${TRITON_IMAGE} AS runtime
# The python backend runs the image's system Python (Ubuntu marks it externally managed);
# this image is ours alone, so install into it.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# torch from PyPI is the CUDA build; the versions the Makefile pins.
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY --from=wheels /wheels /tmp/wheels
RUN pip install /tmp/wheels/*.whl && rm -rf /tmp/wheels
COPY triton_models /opt/samserve/triton_models
# The image's unprivileged "triton-server" user (uid 1000).
USER 1000:1000
EXPOSE 8000 8001 8002
# tini as PID 1 forwards SIGTERM to tritonserver (which stops taking requests and finishes
# queued ones) and reaps the python backend's stub processes.
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/nvidia/nvidia_entrypoint.sh"]
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=none", \
     "--strict-readiness=true", "--exit-on-error=true"]

# syntax=docker/dockerfile:1
# Triton Inference Server with the SAM image encoder (python backend): the official Triton
# image plus torch, segment_anything, sam2, samserve (model.py builds the encoder with samserve's
# loader) and triton_models/ at /opt/samserve/triton_models. The Deployment's init container
# copies the one configured variant into the model repository Triton serves (model control
# mode none loads everything it finds). Build from the repository root:
#   docker build -f docker/triton.Dockerfile -t samserve/samserve-triton:0.1.0 .
# CPU-only (dev) build, much smaller: add
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# No weights in the image: the vit_* configs read /checkpoints (a volume).
#
# CUDA: the base image and torch must agree, and the node's driver must be new enough for
# both. 25.10 is CUDA 13.0 (Ubuntu 24.04, Python 3.12); torch comes from PyTorch's cu130
# index, the same CUDA 13.0 build PyPI serves; a RUN step below refuses any other pairing.
# Nodes need an R580 or newer driver (CUDA 13.0's minimum, 580.65.06); with an older one
# Triton would fail at its first CUDA call and, under --exit-on-error, CrashLoop. The prod
# overlay schedules Triton only on nodes whose driver GPU Feature Discovery reports as 580+.
# Moving the base to another release means moving TORCH_INDEX_URL to its CUDA (cuXYZ).
#
# Size and pull time: the -pyt-python-py3 flavour carries only the PyTorch and Python
# backends (the -py3 one adds TensorRT, ONNX Runtime, OpenVINO, DALI and more, none used);
# torch sits in its own layer below samserve's, so a samserve release re-pulls megabytes, not
# gigabytes; on GKE, Artifact Registry with image streaming starts the container before the
# pull ends (docs/deploy.md, "Images").
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.10-pyt-python-py3
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
# torch built for the base image's CUDA (see the top); the versions the Makefile pins.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# Then refuse a torch whose CUDA is not the image's (CUDA_VERSION is set by every NGC image,
# e.g. 13.0.2.006); a CPU build (dev) has no CUDA.
RUN pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && python3 -c 'import os, torch; \
base = os.environ["CUDA_VERSION"].split(".")[:2]; \
built = torch.version.cuda; \
assert built is None or built.split(".")[:2] == base, f"torch CUDA {built}, image CUDA {base}"'
COPY --from=wheels /wheels /tmp/wheels
# With samserve's "sam2" extra (pyproject.toml: the same pins): the SAM 2.1 models
# (triton_models/sam_image_encoder_sam2*) build their encoder with the official sam2 package;
# its CUDA extension is only for video, so it is not built.
RUN SAM2_BUILD_CUDA=0 pip install /tmp/wheels/*.whl \
        "sam2==1.1.0" "hydra-core>=1.3.2" "iopath>=0.1.10" \
    && rm -rf /tmp/wheels
COPY triton_models /opt/samserve/triton_models
# The image's unprivileged "triton-server" user (uid 1000).
USER 1000:1000
EXPOSE 8000 8001 8002
# tini as PID 1 forwards SIGTERM to tritonserver (which stops taking requests and finishes
# queued ones) and reaps the python backend's stub processes.
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/nvidia/nvidia_entrypoint.sh"]
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=none", \
     "--strict-readiness=true", "--exit-on-error=true"]

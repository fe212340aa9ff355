"""Triton entry point of sam_image_encoder_vit_b: the model is samserve.triton_model."""

from samserve.triton_model import TritonPythonModel  # noqa: F401

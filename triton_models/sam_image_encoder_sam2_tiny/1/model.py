"""Triton entry point of sam_image_encoder_sam2_tiny:
the model is samserve.triton_model_sam2."""

from samserve.triton_model_sam2 import TritonPythonModel  # noqa: F401

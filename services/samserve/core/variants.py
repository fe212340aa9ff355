"""The model variants samserve serves, by name (no torch here: the CLI parses flags with it)."""

from __future__ import annotations

#: SAM 1 variants: the official ViTs and ``tiny``, the test-size architecture.
VARIANTS: tuple[str, ...] = ("vit_h", "vit_l", "vit_b", "tiny")

#: Compute dtypes an image encoder may run in (each but float32 marks the model id).
ENCODER_DTYPES = ("float32", "bfloat16", "float16")

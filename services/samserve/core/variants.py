"""The model variants samserve serves, by name (no torch here: the CLI parses flags with it)."""

from __future__ import annotations

#: SAM 1 variants: the official ViTs and ``tiny``, the test-size architecture.
SAM1_VARIANTS: tuple[str, ...] = ("vit_h", "vit_l", "vit_b", "tiny")

#: SAM 2.1 and SAM 2.0 image models, each with the config bundled in the official ``sam2``
#: package, and ``sam2_tiny``: hiera_t's config cut to a few blocks, the test-size architecture.
SAM2_CONFIGS: dict[str, str] = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "sam2_hiera_t": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_s": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_b+": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_l": "configs/sam2/sam2_hiera_l.yaml",
    "sam2_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
}
SAM2_VARIANTS: tuple[str, ...] = tuple(SAM2_CONFIGS)

#: Every variant, SAM 1 first.
VARIANTS: tuple[str, ...] = SAM1_VARIANTS + SAM2_VARIANTS

#: The model families: which official package a variant follows.
FAMILIES: tuple[str, ...] = ("sam1", "sam2")


def family_of(variant: str) -> str:
    """``"sam2"`` for a SAM 2 / 2.1 variant, ``"sam1"`` otherwise."""
    return "sam2" if variant in SAM2_CONFIGS else "sam1"


def triton_model_name(variant: str) -> str:
    """Name of the Triton model that serves ``variant`` (``sam_image_encoder_vit_h``,
    ``sam_image_encoder_sam2_1_hiera_t``, ...): ``.`` and ``+`` of SAM 2 names are spelled out,
    so the name is a plain folder and URL path segment."""
    return "sam_image_encoder_" + variant.replace(".", "_").replace("+", "_plus")


def family_of_model_id(model_id: str) -> str:
    """The family of a model id (``<variant>-<16 hex digits>[-<dtype>]``) or of a variant."""
    return family_of(model_id.split("-", 1)[0])  # no variant name has a "-"


#: Compute dtypes an image encoder may run in (each but float32 marks the model id).
ENCODER_DTYPES = ("float32", "bfloat16", "float16")

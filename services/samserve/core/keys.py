"""Redis keys: layout version, model identity and content hash, so nothing is ever shared.

An entry is found only by the model that wrote it (variant *and* weights checksum) under the
same value layout; a different model or layout reads a miss, never a wrong answer.
"""

from __future__ import annotations

import re

from samserve.core.variants import family_of_model_id

#: Bump when the stored value layout changes; old entries then read as misses.
LAYOUT_VERSION = 1
#: The layout of a SAM 2 / 2.1 model's entries: the image embedding and both high-resolution
#: maps (``store.SAM2_SHAPES``).
LAYOUT_VERSION_SAM2 = 2
PREFIX = "samserve"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def is_image_id(value: str) -> bool:
    """True for a lowercase hex sha256."""
    return bool(_HEX64.match(value))


def layout_version(model_id: str) -> int:
    """The value layout of ``model_id``'s entries: its family decides it."""
    return LAYOUT_VERSION_SAM2 if family_of_model_id(model_id) == "sam2" else LAYOUT_VERSION


def embedding_key(model_id: str, image_id: str) -> str:
    """Key of the whole-image embedding of ``image_id`` under ``model_id``."""
    return f"{PREFIX}:emb:v{layout_version(model_id)}:{model_id}:{image_id}"


def crop_id(image_id: str, box: list[int]) -> str:
    """Store id of the embedding of crop ``box`` (XYXY pixels) of ``image_id``.

    Crop embeddings live next to whole-image ones, under
    ``samserve:emb:v{LAYOUT}:{model_id}:{image_id}:crop:{x0},{y0},{x1},{y1}``, so they share the
    whole-image entries' model and layout isolation (and their TTL).
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    return f"{image_id}:crop:{x0},{y0},{x1},{y1}"

"""Redis keys: layout version, model identity and content hash, so nothing is ever shared.

An entry is found only by the model that wrote it (variant *and* weights checksum) under the
same value layout; a different model or layout reads a miss, never a wrong answer.

Every key of one image carries the Redis Cluster hash tag ``{image_id}``: its whole-image
entry, its crop embeddings and its encode lease hash to one slot, so a cluster keeps them on
one node (multi-key scripts and pipelines work on them) and a single Redis ignores the braces.
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


def _tagged(store_id: str) -> str:
    """``store_id`` with its image id wrapped in a hash tag: ``{image}`` or ``{image}:crop:...``."""
    image_id, sep, rest = store_id.partition(":")
    return f"{{{image_id}}}{sep}{rest}"


def embedding_key(model_id: str, image_id: str) -> str:
    """Key of the embedding ``image_id`` (an image id, or a :func:`crop_id`) under ``model_id``:
    ``samserve:emb:v{LAYOUT}:{model_id}:{<image id>}[:crop:...]`` (the braces around the
    image id are literal: the cluster hash tag)."""
    return f"{PREFIX}:emb:v{layout_version(model_id)}:{model_id}:{_tagged(image_id)}"


def lease_key(model_id: str, image_id: str) -> str:
    """Key of the encode lease of ``image_id`` under ``model_id`` (same slot as its entries)."""
    return f"{PREFIX}:lease:v{layout_version(model_id)}:{model_id}:{_tagged(image_id)}"


def crop_id(image_id: str, box: list[int]) -> str:
    """Store id of the embedding of crop ``box`` (XYXY pixels) of ``image_id``.

    Crop embeddings live next to whole-image ones, under
    ``samserve:emb:v{LAYOUT}:{model_id}:{<image id>}:crop:{x0},{y0},{x1},{y1}``, so they share the
    whole-image entries' model and layout isolation, their TTL and their cluster slot.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    return f"{image_id}:crop:{x0},{y0},{x1},{y1}"

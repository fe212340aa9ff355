"""Mask encodings for the wire: packed bits and COCO RLE."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def pack_bitmask(mask: np.ndarray) -> bytes:
    """Row-major bits of a bool (H, W) mask, ``numpy.packbits`` order."""
    return np.packbits(mask, axis=None).tobytes()


def encode_coco_rle(masks: np.ndarray) -> list[bytes]:
    """COCO RLE compressed counts of each bool (H, W) mask in a (K, H, W) stack."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [bytes(r["counts"]) for r in rles]


def decode_coco_rle(counts: bytes, height: int, width: int) -> np.ndarray:
    """Bool (H, W) mask from COCO RLE compressed counts."""
    return np.asarray(mask_utils.decode({"size": [height, width], "counts": counts}), dtype=bool)

"""Mask encodings for the wire: packed bits, COCO RLE and polygons."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def pack_bitmask_rle(rle: dict[str, Any]) -> bytes:
    """:func:`pack_bitmask` of a mask given as the official uncompressed RLE (``amg`` records)."""
    from segment_anything.utils.amg import rle_to_mask

    return pack_bitmask(rle_to_mask(rle))


def coco_rle_counts(rle: dict[str, Any]) -> bytes:
    """COCO compressed counts of an uncompressed RLE, as ``amg.coco_encode_rle`` makes them."""
    h, w = rle["size"]
    encoded = mask_utils.frPyObjects(rle, h, w)
    return bytes(encoded["counts"])


@dataclass(frozen=True, slots=True)
class Polygon:
    """One closed polygon of a mask: (N, 2) int32 (x, y) vertices, and whether it is a hole."""

    xy: np.ndarray
    hole: bool


def encode_polygons(mask: np.ndarray) -> list[Polygon]:
    """Outer boundaries and holes of a bool (H, W) mask (``cv2.findContours``, RETR_CCOMP).

    Lossy at the pixel boundary: one-pixel-wide parts and holes may not survive the SDK's
    rasterisation (``samserve_client._convert.polygons_to_mask``) exactly (round trips measure
    IoU >= 0.9 on shapes, see tests/unit/test_masks.py).
    """
    import cv2  # opencv-python-headless

    contours, hierarchy = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    if hierarchy is None:
        return []
    return [
        Polygon(np.asarray(c, dtype=np.int32).reshape(-1, 2), bool(hierarchy[0][i][3] != -1))
        for i, c in enumerate(contours)
    ]

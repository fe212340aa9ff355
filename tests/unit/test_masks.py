"""Mask encodings: bitmask and COCO RLE are exact, polygons are close (lossy at the boundary)."""

from __future__ import annotations

import numpy as np
import pytest
from segment_anything.utils.amg import coco_encode_rle, mask_to_rle_pytorch

from samserve.core.decoder import EncodedPrediction, MaskEncoding
from samserve.core.masks import (
    Polygon,
    coco_rle_counts,
    encode_coco_rle,
    encode_polygons,
    pack_bitmask,
    pack_bitmask_rle,
)
from samserve.rpc.decoder import result_to_proto
from samserve_client import _convert
from samserve_client.pb import common_pb2
from tools.shapes import make_shapes_image

#: Polygon round trips on generated shapes: measured 1.0 for filled shapes, 0.995 with a hole
#: and an island inside it; this bound leaves room for thin parts.
MIN_POLYGON_IOU = 0.95


def decode_coco_rle(counts: bytes, height: int, width: int) -> np.ndarray:
    """The SDK's decoding of a COCO RLE mask (the server only encodes)."""
    rle = common_pb2.CocoRle(counts=counts)
    return _convert.mask_from_proto(common_pb2.Mask(height=height, width=width, coco_rle=rle))


def decode_polygons(polygons: list[Polygon], height: int, width: int) -> np.ndarray:
    """The SDK's rasterisation of polygons."""
    return _convert.polygons_to_mask([(p.xy, p.hole) for p in polygons], height, width)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def masks() -> np.ndarray:
    shapes = make_shapes_image(seed=2, height=120, width=160)
    ring = np.zeros((120, 160), dtype=bool)
    ring[20:100, 30:130] = True
    ring[40:80, 60:100] = False
    ring[55:65, 75:85] = True  # an island inside the hole
    return np.concatenate([np.asarray(shapes.masks, dtype=bool), ring[None]], axis=0)


def test_rle_round_trip(masks: np.ndarray) -> None:
    for m, counts in zip(masks, encode_coco_rle(masks), strict=True):
        assert np.array_equal(decode_coco_rle(counts, *m.shape), m)


def test_amg_rle_helpers_match_official(masks: np.ndarray) -> None:
    import torch

    for m in masks:
        rle = mask_to_rle_pytorch(torch.as_tensor(m)[None])[0]
        assert pack_bitmask_rle(rle) == pack_bitmask(m)
        assert coco_rle_counts(rle).decode() == coco_encode_rle(rle)["counts"]


def test_polygon_round_trip(masks: np.ndarray) -> None:
    for m in masks:
        polygons = encode_polygons(m)
        assert polygons
        assert _iou(decode_polygons(polygons, *m.shape), m) >= MIN_POLYGON_IOU
    assert any(p.hole for p in encode_polygons(masks[-1]))


def test_empty_mask_has_no_polygons() -> None:
    empty = np.zeros((8, 9), dtype=bool)
    assert encode_polygons(empty) == []
    assert not decode_polygons([], 8, 9).any()


@pytest.mark.parametrize("encoding", list(MaskEncoding))
def test_wire_round_trip(masks: np.ndarray, encoding: MaskEncoding) -> None:
    """Server encoding -> proto -> SDK arrays, for every encoding."""
    if encoding is MaskEncoding.COCO_RLE:
        payload: list = encode_coco_rle(masks)
    elif encoding is MaskEncoding.POLYGON:
        payload = [encode_polygons(m) for m in masks]
    else:
        payload = [pack_bitmask(m) for m in masks]
    pred = EncodedPrediction(payload, np.zeros(len(masks), dtype=np.float32), None)
    msg = result_to_proto(pred, encoding, *masks.shape[1:])
    back = _convert.masks_from_proto(msg.masks, *masks.shape[1:])
    for a, b in zip(back, masks, strict=True):
        if encoding is MaskEncoding.POLYGON:
            assert _iou(a, b) >= MIN_POLYGON_IOU
        else:
            assert np.array_equal(a, b)

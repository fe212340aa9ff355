"""SegmentEverything and EmbedCrops through real gRPC: hash-first flow, streaming, errors."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from samserve.rpc import decoder as decoder_grpc
from samserve_client import EmbeddingRef, InvalidArgumentError, NotFoundError
from samserve_client.pb import decoder_pb2, decoder_pb2_grpc, embedding_pb2, embedding_pb2_grpc
from tests.conftest import png_bytes
from tests.stack import StackThread

pytestmark = pytest.mark.integration

# Random tiny weights: every mask has stability 0, so thresholds 0 keep masks to stream.
FAST = {
    "points_per_side": 2,
    "points_per_batch": 4,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
}


@pytest.fixture(scope="module")
def small_rgb() -> np.ndarray:
    from tools.shapes import make_shapes_image

    return make_shapes_image(seed=5, height=96, width=128).image


def _fields(records: list[dict], shape: tuple[int, int]) -> None:
    for r in records:
        assert r["segmentation"].dtype == bool
        assert r["segmentation"].shape == shape
        assert r["area"] == int(r["segmentation"].sum())
        assert len(r["bbox"]) == 4
        assert len(r["crop_box"]) == 4
        assert len(r["point_coords"]) == 1
        assert len(r["point_coords"][0]) == 2
        assert isinstance(r["predicted_iou"], float)
        assert isinstance(r["stability_score"], float)


def test_hash_first_then_ref(stack: StackThread, small_rgb: np.ndarray) -> None:
    data = png_bytes(small_rgb)
    with stack.client() as client:
        first = client.segment_everything(data, **FAST)  # NOT_FOUND, upload, again
        assert first, "thresholds 0 and no NMS keep masks"
        _fields(first, small_rgb.shape[:2])
        ref = client.embed(data)
        assert ref.cached
        again = client.segment_everything(ref, **FAST)
    assert [r["bbox"] for r in again] == [r["bbox"] for r in first]
    assert all(
        np.array_equal(a["segmentation"], b["segmentation"])
        for a, b in zip(first, again, strict=True)
    )


async def test_async_matches_sync(stack: StackThread, small_rgb: np.ndarray) -> None:
    data = png_bytes(small_rgb)
    async with stack.async_client() as client:
        out = await client.segment_everything(data, output_mode="coco_rle", **FAST)
    with stack.client() as sync:
        expected = sync.segment_everything(data, output_mode="coco_rle", **FAST)
    assert out == expected
    assert all(isinstance(r["segmentation"]["counts"], str) for r in out)


def test_stream_in_groups(stack: StackThread, small_rgb: np.ndarray, monkeypatch) -> None:
    data = png_bytes(small_rgb)
    with stack.client() as client:
        records = client.segment_everything(data, **FAST)
    monkeypatch.setattr(decoder_grpc, "STREAM_CHUNK_BYTES", 1)
    from samserve_client import image_id

    with grpc.insecure_channel(stack.decoder_address) as ch:
        stub = decoder_pb2_grpc.DecoderServiceStub(ch)
        req = decoder_pb2.SegmentEverythingRequest(image_id=image_id(data), **FAST)
        messages = list(stub.SegmentEverything(req, timeout=60))
    assert len(messages) == len(records)
    assert all(len(m.records) == 1 for m in messages)
    assert messages[0].height == small_rgb.shape[0]


def test_empty_answer_is_one_message(stack: StackThread, small_rgb: np.ndarray) -> None:
    data = png_bytes(small_rgb)
    with stack.client() as client:
        ref = client.embed(data)
        # Random weights: stability scores are 0, so the default threshold keeps nothing.
        assert client.segment_everything(ref, points_per_side=2) == []
    with grpc.insecure_channel(stack.decoder_address) as ch:
        stub = decoder_pb2_grpc.DecoderServiceStub(ch)
        req = decoder_pb2.SegmentEverythingRequest(image_id=ref.image_id, points_per_side=2)
        messages = list(stub.SegmentEverything(req, timeout=60))
    assert len(messages) == 1
    assert not messages[0].records
    assert (messages[0].height, messages[0].width) == small_rgb.shape[:2]


def test_crops_need_embed_crops(stack: StackThread, small_rgb: np.ndarray) -> None:
    data = png_bytes(small_rgb)
    params = {**FAST, "crop_n_layers": 1, "crop_n_points_downscale_factor": 2}
    with stack.client() as client:
        ref = client.embed(data)
        with pytest.raises(NotFoundError, match="crop embeddings"):
            client.segment_everything(ref, **params)
        records = client.segment_everything(data, **params)  # uploads with EmbedCrops
        _fields(records, small_rgb.shape[:2])
        again = client.segment_everything(ref, **params)  # crops stored now
    assert [r["bbox"] for r in again] == [r["bbox"] for r in records]
    with grpc.insecure_channel(stack.embedding_address) as ch:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(ch)
        resp = stub.EmbedCrops(
            embedding_pb2.EmbedCropsRequest(
                image=data, crop_n_layers=1, crop_overlap_ratio=512 / 1500
            ),
            timeout=60,
        )
    assert (resp.crops, resp.encoded) == (5, 0)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"points_per_side": 0}, "points_per_side"),
        ({"points_per_batch": 0}, "points_per_batch"),
        ({"pred_iou_thresh": float("nan")}, "pred_iou_thresh"),
        ({"stability_score_thresh": 1.5}, "stability_score_thresh"),
        ({"box_nms_thresh": -0.1}, "box_nms_thresh"),
        ({"crop_n_layers": -1}, "crop_n_layers"),
        ({"crop_overlap_ratio": 1.0}, "crop_overlap_ratio"),
        ({"crop_n_points_downscale_factor": 0}, "crop_n_points_downscale_factor"),
        ({"min_mask_region_area": -1}, "min_mask_region_area"),
        ({"output_mode": "uncompressed_rle"}, "output_mode"),
    ],
)
def test_invalid_parameters(stack: StackThread, small_rgb, params, needle) -> None:
    data = png_bytes(small_rgb)
    with stack.client() as client:
        ref = client.embed(data)
    with grpc.insecure_channel(stack.decoder_address) as ch:
        stub = decoder_pb2_grpc.DecoderServiceStub(ch)
        req = decoder_pb2.SegmentEverythingRequest(image_id=ref.image_id, **params)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.SegmentEverything(req, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.details()


def test_limits_and_unknowns(stack: StackThread, small_rgb: np.ndarray) -> None:
    with stack.client() as client:
        ref = client.embed(png_bytes(small_rgb))
        with pytest.raises(InvalidArgumentError, match="unknown"):
            client.segment_everything(ref, point_grids=[])
        from samserve_client import ResourceExhaustedError

        with pytest.raises(ResourceExhaustedError, match="points_per_side"):
            client.segment_everything(ref, points_per_side=100_000)
        missing = EmbeddingRef("0" * 64, False, "", 0, 0)
        with pytest.raises(NotFoundError):
            client.segment_everything(missing, **FAST)


def test_refine_session_sync_and_async(stack: StackThread, small_rgb: np.ndarray) -> None:
    data = png_bytes(small_rgb)
    with stack.client() as client, client.refine(data, mask_encoding="polygon") as session:
        first = session.click(40, 30)  # NOT_FOUND on the first step: upload, then again
        second = session.click(90, 60, 0)
        third = session.box([10, 10, 100, 80])
    assert first.masks.shape == (1, *small_rgb.shape[:2])
    assert second.masks.shape == third.masks.shape == first.masks.shape
    assert session.steps == 3

    async def run() -> list:
        async with (
            stack.async_client() as aclient,
            aclient.refine(data, mask_encoding="polygon") as s,
        ):
            return [await s.click(40, 30), await s.click(90, 60, 0)]

    import asyncio

    out = asyncio.run(run())
    for a, b in zip(out, [first, second], strict=True):
        assert np.array_equal(a.masks, b.masks)
        np.testing.assert_allclose(a.scores, b.scores)


def test_refine_errors(stack: StackThread, small_rgb: np.ndarray) -> None:
    missing = EmbeddingRef("0" * 64, False, "", 0, 0)
    with stack.client() as client:
        with client.refine(missing) as session, pytest.raises(NotFoundError):
            session.click(1, 1)
        ref = client.embed(png_bytes(small_rgb))
        with client.refine(ref) as session, pytest.raises(InvalidArgumentError, match="label"):
            session.click(1, 1, 7)
        with client.refine(ref) as session, pytest.raises(InvalidArgumentError, match="finite"):
            session.click(float("nan"), 1)

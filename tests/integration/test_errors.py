"""Every bad input gets a clear gRPC status, and the service keeps serving."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from samserve_client import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from samserve_client.pb import (
    common_pb2,
    decoder_pb2,
    decoder_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
)
from tests.conftest import jpeg_bytes, png_bytes
from tests.stack import StackThread

pytestmark = pytest.mark.integration


@pytest.fixture
def ref(stack: StackThread, shapes_rgb: np.ndarray):
    with stack.client() as client:
        return client.embed(png_bytes(shapes_rgb))


def _embed_raw(stack: StackThread, data: bytes, model: str = "") -> grpc.RpcError:
    with grpc.insecure_channel(
        stack.embedding_address, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as ch:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(embedding_pb2.EmbedRequest(image=data, model=model), timeout=30)
    return info.value


def _segment_raw(stack: StackThread, request: decoder_pb2.SegmentRequest) -> grpc.RpcError:
    with grpc.insecure_channel(stack.decoder_address) as ch:
        stub = decoder_pb2_grpc.DecoderServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Segment(request, timeout=30)
    return info.value


def _still_serving(stack: StackThread, shapes_rgb: np.ndarray) -> None:
    with stack.client() as client:
        res = client.segment(shapes_rgb, points=[[100, 100]])
    assert res.masks.shape == (3, *shapes_rgb.shape[:2])


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buf, format="PNG")  # 144 MP, a few KB on the wire
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "code", "needle"),
    [
        ("not an image", b"this is not an image", grpc.StatusCode.INVALID_ARGUMENT, "image"),
        ("empty", b"", grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        ("bomb", None, grpc.StatusCode.RESOURCE_EXHAUSTED, "pixels"),
    ],
)
def test_bad_images(stack, shapes_rgb, name, data, code, needle) -> None:
    err = _embed_raw(stack, _bomb() if data is None else data)
    assert err.code() == code, name
    assert needle in err.details()
    _still_serving(stack, shapes_rgb)


def test_truncated_jpeg(stack, shapes_rgb) -> None:
    data = jpeg_bytes(shapes_rgb)
    err = _embed_raw(stack, data[: len(data) // 2])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image" in err.details()
    _still_serving(stack, shapes_rgb)


def test_over_size_message(stack, shapes_rgb) -> None:
    too_big = b"\0" * (stack.limits.max_message_bytes + 1024)
    err = _embed_raw(stack, too_big)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _still_serving(stack, shapes_rgb)


def test_over_byte_limit_inside_message(tiny_random, redis_url, shapes_rgb) -> None:
    from samserve.config import Limits

    stack = StackThread(tiny_random, redis_url, limits=Limits(max_image_bytes=1000)).start()
    try:
        err = _embed_raw(stack, png_bytes(shapes_rgb)[:2000])
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit" in err.details()
    finally:
        stack.close()


def test_unknown_model(stack, shapes_rgb) -> None:
    err = _embed_raw(stack, png_bytes(shapes_rgb), model="vit_x")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown model" in err.details()
    with stack.client(model="vit_h") as client, pytest.raises(InvalidArgumentError):
        client.segment(shapes_rgb, points=[[1, 1]])
    _still_serving(stack, shapes_rgb)


def test_unknown_image_id(stack, shapes_rgb) -> None:
    err = _segment_raw(
        stack,
        decoder_pb2.SegmentRequest(
            image_id="ab" * 32,
            prompts=[decoder_pb2.Prompt(points=[common_pb2.Point(x=1, y=1, label=1)])],
        ),
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = _segment_raw(stack, decoder_pb2.SegmentRequest(image_id="../etc/passwd"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    _still_serving(stack, shapes_rgb)


def _point(x: float, y: float, label: int = 1) -> common_pb2.Point:
    return common_pb2.Point(x=x, y=y, label=label)


@pytest.mark.parametrize(
    ("name", "prompts", "needle"),
    [
        ("no prompts", [], "at least one prompt"),
        ("empty prompt", [decoder_pb2.Prompt()], "empty prompt"),
        ("NaN", [decoder_pb2.Prompt(points=[_point(float("nan"), 3)])], "finite"),
        ("inf", [decoder_pb2.Prompt(points=[_point(3, float("inf"))])], "finite"),
        ("padding label", [decoder_pb2.Prompt(points=[_point(3, 3, -1)])], "label"),
        ("label 2", [decoder_pb2.Prompt(points=[_point(3, 3, 2)])], "label"),
        ("bad box", [decoder_pb2.Prompt(box=common_pb2.Box(x0=10, y0=10, x1=1, y1=1))], "box"),
        (
            "bad mask_input",
            [
                decoder_pb2.Prompt(
                    mask_input=common_pb2.Tensor(
                        shape=[1, 64, 64], dtype=common_pb2.D_TYPE_FLOAT32, data=b"\0" * 64 * 64 * 4
                    )
                )
            ],
            "mask_input",
        ),
        (
            "mask bytes vs shape",
            [
                decoder_pb2.Prompt(
                    mask_input=common_pb2.Tensor(
                        shape=[1, 256, 256], dtype=common_pb2.D_TYPE_FLOAT32, data=b"\0" * 10
                    )
                )
            ],
            "do not fit",
        ),
    ],
)
def test_bad_prompts(stack, ref, shapes_rgb, name, prompts, needle) -> None:
    err = _segment_raw(stack, decoder_pb2.SegmentRequest(image_id=ref.image_id, prompts=prompts))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, name
    assert needle in err.details(), err.details()
    _still_serving(stack, shapes_rgb)


def test_mismatched_points_and_labels(stack, ref) -> None:
    # The wire pairs each point with its label; the SDK refuses a mismatch before sending.
    with stack.client() as client, pytest.raises(InvalidArgumentError, match="labels"):
        client.segment(ref, points=[[1, 1], [2, 2]], labels=[1])


def test_too_many_points(stack, ref) -> None:
    with stack.client() as client, pytest.raises(ResourceExhaustedError):
        client.segment(ref, points=np.ones((stack.limits.max_points + 1, 2)))


def test_sdk_maps_not_found(stack) -> None:
    from samserve_client import EmbeddingRef

    with stack.client() as client, pytest.raises(NotFoundError) as info:
        client.segment(EmbeddingRef("cd" * 32, False, "", 1, 1), points=[[1, 1]])
    assert info.value.code == grpc.StatusCode.NOT_FOUND

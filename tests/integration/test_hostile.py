# ruff: noqa: E501  (the catalogue reads best one case a line)
"""A catalogue of hostile inputs, each with the status it must get; the services stay SERVING.

``CASES`` is the catalogue (``python -m tests.integration.test_hostile`` prints it as a table).
Every case runs against real servers over real gRPC, with raw stubs (no SDK checks in front).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from samserve.config import DecoderSettings, Limits
from samserve.core import keys
from samserve.core.models import LoadedModel
from samserve_client.pb import (
    common_pb2,
    decoder_pb2,
    decoder_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
)
from tests.conftest import png_bytes
from tests.stack import StackThread
from tools.shapes import make_shapes_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

OK, INVALID, NOT_FOUND, EXHAUSTED = (
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


def _saved(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _patched_jpeg(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF header claims ``width`` x ``height``."""
    data = bytearray(_saved(Image.new("L", (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _patched_bmp(width: int, height: int) -> bytes:
    data = bytearray(_saved(Image.new("1", (8, 8)), "BMP"))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def _patched_webp(width: int, height: int) -> bytes:
    """A small lossless WebP whose VP8L header claims ``width`` x ``height`` (max 16384)."""
    data = bytearray(_saved(Image.new("RGB", (8, 8)), "WEBP", lossless=True))
    at = data.index(b"VP8L") + 9  # chunk tag, size (4), signature byte 0x2f
    bits = int.from_bytes(data[at : at + 4], "little")
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    data[at : at + 4] = bits.to_bytes(4, "little")
    return bytes(data)


def _tensor(shape: list[int], data: bytes = b"", dtype: int = common_pb2.D_TYPE_FLOAT32):
    return common_pb2.Tensor(shape=shape, dtype=dtype, data=data)


def _point(x: float = 10, y: float = 10, label: int = 1) -> common_pb2.Point:
    return common_pb2.Point(x=x, y=y, label=label)


@dataclass(frozen=True)
class Stubs:
    embedding: embedding_pb2_grpc.EmbeddingServiceStub
    decoder: decoder_pb2_grpc.DecoderServiceStub
    image_id: str  # a stored 240x320 image
    tiny_id: str  # a stored 3x3 image
    redis: redis.Redis
    model_id: str


def _embed(data: bytes, **kw: Any) -> Callable[[Stubs], Any]:
    return lambda s: s.embedding.Embed(embedding_pb2.EmbedRequest(image=data, **kw), timeout=60)


def _segment(*prompts: decoder_pb2.Prompt, **kw: Any) -> Callable[[Stubs], Any]:
    def call(s: Stubs) -> Any:
        request = decoder_pb2.SegmentRequest(
            image_id=kw.pop("image_id", s.image_id), prompts=list(prompts), **kw
        )
        return s.decoder.Segment(request, timeout=60)

    return call


def _everything(**params: Any) -> Callable[[Stubs], Any]:
    def call(s: Stubs) -> Any:
        request = decoder_pb2.SegmentEverythingRequest(image_id=s.image_id, **params)
        return list(s.decoder.SegmentEverything(request, timeout=120))

    return call


def _refine(*requests: decoder_pb2.RefineRequest) -> Callable[[Stubs], Any]:
    return lambda s: list(s.decoder.Refine(iter(requests), timeout=60))


def _stored(value: bytes) -> Callable[[Stubs], Any]:
    """Segment an image whose stored entry was replaced by ``value``."""

    def call(s: Stubs) -> Any:
        image_id = "ee" * 32
        s.redis.set(keys.embedding_key(s.model_id, image_id), value)
        return _segment(decoder_pb2.Prompt(points=[_point()]), image_id=image_id)(s)

    return call


def _header_value(header: bytes) -> bytes:
    return struct.pack("<6sBI", b"SAMEMB", keys.LAYOUT_VERSION, len(header)) + header


BOX = common_pb2.Box(x0=0, y0=0, x1=100, y1=100)

#: (name, call, expected status). The names are the catalogue's rows.
CASES: list[tuple[str, Callable[[Stubs], Any], grpc.StatusCode]] = [
    ("Embed: empty image", _embed(b""), INVALID),
    ("Embed: bytes that are no image", _embed(b"this is not an image"), INVALID),
    ("Embed: truncated PNG", lambda s: _embed(png_bytes(np.zeros((64, 64, 3), np.uint8))[:60])(s), INVALID),
    ("Embed: truncated JPEG", _embed(_saved(Image.new("RGB", (64, 64)), "JPEG")[:200]), INVALID),
    ("Embed: GIF (not an accepted format)", _embed(_saved(Image.new("L", (8, 8)), "GIF")), INVALID),
    ("Embed: PNG bomb, 144 MP in a few KB", _embed(_saved(Image.new("1", (12000, 12000)), "PNG")), EXHAUSTED),
    ("Embed: PNG over Pillow's own guard (196 MP)", _embed(_saved(Image.new("1", (14000, 14000)), "PNG")), EXHAUSTED),
    ("Embed: JPEG header claiming 60000x60000", _embed(_patched_jpeg(60000, 60000)), EXHAUSTED),
    ("Embed: WebP header claiming 16384x16384", _embed(_patched_webp(16384, 16384)), EXHAUSTED),
    ("Embed: TIFF bomb, 144 MP group4", _embed(_saved(Image.new("1", (12000, 12000)), "TIFF", compression="group4")), EXHAUSTED),
    ("Embed: BMP header claiming 20000x20000", _embed(_patched_bmp(20000, 20000)), EXHAUSTED),
    ("Embed: message over the receive limit", _embed(b"\0" * (34 << 20)), EXHAUSTED),
    ("Embed: unknown model", _embed(b"x", model="vit_x"), INVALID),
    ("EmbedCrops: a 3x3 image", lambda s: s.embedding.EmbedCrops(embedding_pb2.EmbedCropsRequest(image=png_bytes(np.full((3, 3, 3), 200, np.uint8)), crop_n_layers=1), timeout=120), OK),
    ("EmbedCrops: crop_n_layers 10", lambda s: s.embedding.EmbedCrops(embedding_pb2.EmbedCropsRequest(image=b"x", crop_n_layers=10), timeout=60), EXHAUSTED),
    ("EmbedCrops: NaN overlap", lambda s: s.embedding.EmbedCrops(embedding_pb2.EmbedCropsRequest(image=b"x", crop_n_layers=1, crop_overlap_ratio=float("nan")), timeout=60), INVALID),
    ("Segment: image id that is no sha256", _segment(decoder_pb2.Prompt(points=[_point()]), image_id="../etc/passwd"), INVALID),
    ("Segment: unknown image id", _segment(decoder_pb2.Prompt(points=[_point()]), image_id="ab" * 32), NOT_FOUND),
    ("Segment: no prompts", _segment(), INVALID),
    ("Segment: empty prompt", _segment(decoder_pb2.Prompt()), INVALID),
    ("Segment: NaN coordinate", _segment(decoder_pb2.Prompt(points=[_point(float("nan"))])), INVALID),
    ("Segment: label -1 (padding in the official code)", _segment(decoder_pb2.Prompt(points=[_point(label=-1)])), INVALID),
    ("Segment: label 2", _segment(decoder_pb2.Prompt(points=[_point(label=2)])), INVALID),
    ("Segment: 65 points", _segment(decoder_pb2.Prompt(points=[_point()] * 65)), EXHAUSTED),
    ("Segment: 65 prompts", _segment(*[decoder_pb2.Prompt(points=[_point()])] * 65), EXHAUSTED),
    ("Segment: inverted box", _segment(decoder_pb2.Prompt(box=common_pb2.Box(x0=50, y0=50, x1=1, y1=1))), INVALID),
    ("Segment: infinite box", _segment(decoder_pb2.Prompt(box=common_pb2.Box(x0=0, y0=0, x1=float("inf"), y1=1))), INVALID),
    ("Segment: mask_input 2^32 x 2^32", _segment(decoder_pb2.Prompt(mask_input=_tensor([2**32, 2**32], b"\0" * 16))), INVALID),
    ("Segment: mask_input with 40 dimensions", _segment(decoder_pb2.Prompt(mask_input=_tensor([1] * 40, b"\0" * 4))), INVALID),
    ("Segment: mask_input bytes that do not fit", _segment(decoder_pb2.Prompt(mask_input=_tensor([1, 256, 256], b"\0" * 10))), INVALID),
    ("Segment: mask_input without a dtype", _segment(decoder_pb2.Prompt(mask_input=_tensor([1, 256, 256], b"\0" * 4, 0))), INVALID),
    ("Segment: unknown mask encoding", _segment(decoder_pb2.Prompt(points=[_point()]), mask_encoding=99), INVALID),
    ("Segment: answer over the response limit (64 boxes, logits)", _segment(*[decoder_pb2.Prompt(box=BOX)] * 64, multimask_output=True, return_low_res_logits=True), EXHAUSTED),
    ("SegmentEverything: points_per_side 0", _everything(points_per_side=0), INVALID),
    ("SegmentEverything: a crop layer with no points", _everything(points_per_side=1, crop_n_layers=1, crop_n_points_downscale_factor=2), INVALID),
    ("SegmentEverything: 1000 points per side", _everything(points_per_side=1000), EXHAUSTED),
    ("SegmentEverything: work over the limit for this image", _everything(points_per_side=128), EXHAUSTED),
    ("SegmentEverything: NaN threshold", _everything(pred_iou_thresh=float("nan")), INVALID),
    ("SegmentEverything: unknown output_mode", _everything(output_mode="png"), INVALID),
    ("Refine: first step names no image", _refine(decoder_pb2.RefineRequest(point=_point())), INVALID),
    ("Refine: a step with neither point nor box", lambda s: _refine(decoder_pb2.RefineRequest(image_id=s.image_id))(s), INVALID),
    ("stored value: garbage", _stored(b"garbage"), NOT_FOUND),
    ("stored value: header nested 100,000 deep", _stored(_header_value(b"[" * 100_000)), NOT_FOUND),
    ("stored value: header claiming 2^32 x 2^32", _stored(_header_value(b'{"model_id":"x","dtype":"float16","shape":[4294967296,4294967296,1]}')), NOT_FOUND),
]  # fmt: skip


@pytest.fixture(scope="module")
def stubs(tiny_random: LoadedModel, redis_server) -> Iterator[Stubs]:
    r = redis.Redis(port=redis_server.port)
    r.flushall()
    stack = StackThread(
        tiny_random,
        redis_server.url,
        limits=Limits(max_response_bytes=4 << 20),
        decoder=DecoderSettings(max_everything_work=10**9),
    ).start()
    image = make_shapes_image(seed=3, height=240, width=320).image
    with stack.client() as client:
        image_id = client.embed(image).image_id
        tiny_id = client.embed(np.full((3, 3, 3), 200, np.uint8)).image_id
    options = [("grpc.max_send_message_length", 64 << 20)]
    with (
        grpc.insecure_channel(stack.embedding_address, options=options) as emb,
        grpc.insecure_channel(stack.decoder_address) as dec,
    ):
        yield Stubs(
            embedding_pb2_grpc.EmbeddingServiceStub(emb),
            decoder_pb2_grpc.DecoderServiceStub(dec),
            image_id,
            tiny_id,
            r,
            tiny_random.model_id,
        )
        for channel in (emb, dec):
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
    stack.close()
    r.close()


@pytest.mark.parametrize(("name", "call", "expected"), CASES, ids=[c[0] for c in CASES])
def test_hostile_input(stubs: Stubs, name: str, call: Callable[[Stubs], Any], expected) -> None:
    try:
        call(stubs)
        code = OK
    except grpc.RpcError as e:
        code = e.code()
    assert code == expected, name


def test_the_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 25


if __name__ == "__main__":
    print("| # | hostile input | status |\n|---|---|---|")
    for i, (name, _, code) in enumerate(CASES, 1):
        print(f"| {i} | {name} | {code.name} |")

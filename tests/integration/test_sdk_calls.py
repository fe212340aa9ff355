"""SDK calls end to end: embed_many over the stream, and the asyncio twin."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from samserve_client import InvalidArgumentError, ModelInfo, SamClient
from tests.conftest import png_bytes
from tests.stack import StackThread
from tools.shapes import make_shapes_image

pytestmark = pytest.mark.integration


def _images(n: int) -> list[bytes]:
    return [
        png_bytes(make_shapes_image(seed=100 + i, height=120, width=160).image) for i in range(n)
    ]


def test_embed_many_streams_in_order(stack: StackThread) -> None:
    images = _images(3)
    with stack.client() as client:
        refs = client.embed_many(images)
        again = client.embed_many(images)
    assert [r.cached for r in refs] == [False] * 3
    assert [r.cached for r in again] == [True] * 3
    assert [r.image_id for r in refs] == [r.image_id for r in again]


def test_embed_many_reports_a_bad_item(stack: StackThread) -> None:
    with stack.client() as client, pytest.raises(InvalidArgumentError):
        client.embed_many([_images(1)[0], b"not an image"])


def test_async_client_matches_sync(stack: StackThread, shapes_rgb: np.ndarray) -> None:
    with stack.client() as client:
        expected = client.segment(shapes_rgb, points=[[100, 100]], labels=[1])

    async def run():
        async with stack.async_client() as client:
            ref = await client.embed(shapes_rgb)
            res = await client.segment(ref, points=[[100, 100]], labels=[1])
            refs = await client.embed_many(_images(2))
            info = await client.model_info()
            return ref, res, refs, info

    ref, res, refs, info = asyncio.run(run())
    assert ref.cached
    np.testing.assert_array_equal(res.masks, expected.masks)
    np.testing.assert_allclose(res.scores, expected.scores)
    assert len(refs) == 2
    assert isinstance(info, ModelInfo)
    assert info.model_id == ref.model_id
    assert info.family == "sam1"


def test_deadline_is_applied(stack: StackThread, shapes_rgb: np.ndarray) -> None:
    from samserve_client import DeadlineExceededError

    big = png_bytes(make_shapes_image(seed=9, height=1500, width=2000).image)
    client = SamClient(stack.embedding_address, stack.decoder_address, timeout=0.01)
    with client, pytest.raises(DeadlineExceededError):
        client.embed(big)


def test_timeout_zero_expires_at_once(stack: StackThread) -> None:
    from samserve_client import DeadlineExceededError

    big = png_bytes(make_shapes_image(seed=9, height=1500, width=2000).image)
    with stack.client() as client, pytest.raises(DeadlineExceededError):
        client.embed(big, timeout=0)  # 0 is a deadline, not "the default"
    with stack.client(timeout=0) as client, pytest.raises(DeadlineExceededError):
        client.embed(big)

    async def run() -> None:
        async with stack.async_client() as client:
            await client.embed(big, timeout=0)

    with pytest.raises(DeadlineExceededError):
        asyncio.run(run())

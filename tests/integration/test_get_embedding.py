"""GetEmbedding over real gRPC and Redis: the stored tensor, its geometry, and every status."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from samserve.core.encoder import LocalEncoder, resize_for_encoder
from samserve_client import EmbeddingRef, EmbeddingTensors, InvalidArgumentError, NotFoundError
from samserve_client._channel import aio_channel
from samserve_client._embedding import tensor_array
from samserve_client.pb import common_pb2, embedding_pb2, embedding_pb2_grpc
from tests.conftest import png_bytes
from tests.stack import StackThread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _get(stack: StackThread, image_id: str, model: str = "") -> EmbeddingTensors:
    """``SamClient.get_embedding`` of a stored image id (a reference: nothing is uploaded)."""
    with stack.client(model=model) as client:
        return client.get_embedding(EmbeddingRef(image_id, True, "", 0, 0))


@pytest.mark.parametrize("store_dtype", ["float16", "float32"])
def test_returns_the_stored_tensor(tiny_random, redis_url, store_dtype) -> None:
    rgb = np.zeros((200, 300, 3), dtype=np.uint8)
    rgb[50:150, 100:200] = 220
    stack = StackThread(tiny_random, redis_url, store_dtype=store_dtype).start()
    try:
        with stack.client() as client:
            ref = client.embed(png_bytes(rgb))
        got = _get(stack, ref.image_id)
    finally:
        stack.close()
    assert isinstance(got, EmbeddingTensors)
    assert got.image_id == ref.image_id
    assert got.model_id == tiny_random.model_id == ref.model_id
    assert got.embedding.shape == (1, 256, 64, 64)
    assert got.embedding.dtype == np.dtype(store_dtype)
    assert (got.height, got.width) == (200, 300)
    assert (got.input_height, got.input_width) == (683, 1024)
    assert got.high_res_features == []
    assert got.nbytes == 256 * 64 * 64 * np.dtype(store_dtype).itemsize
    resized = resize_for_encoder(rgb)
    expected = asyncio.run(LocalEncoder(tiny_random.sam).encode(resized))
    np.testing.assert_array_equal(got.embedding[0], expected.astype(store_dtype))


def test_async_twin_and_raw_stub_agree(stack: StackThread, shapes_rgb) -> None:
    with stack.client() as client:
        ref = client.embed(png_bytes(shapes_rgb))
    sync = _get(stack, ref.image_id)

    async def fetch() -> EmbeddingTensors:
        channel = aio_channel(stack.embedding_address, None)
        try:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            raw = await stub.GetEmbedding(
                embedding_pb2.GetEmbeddingRequest(image_id=ref.image_id), timeout=30
            )
            assert raw.embedding.dtype == common_pb2.D_TYPE_FLOAT16
            assert list(raw.embedding.shape) == [1, 256, 64, 64]
            np.testing.assert_array_equal(tensor_array(raw.embedding), sync.embedding)
        finally:
            await channel.close()
        async with stack.async_client() as client:
            return await client.get_embedding(ref)

    np.testing.assert_array_equal(asyncio.run(fetch()).embedding, sync.embedding)


def test_statuses(stack: StackThread, shapes_rgb) -> None:
    with pytest.raises(NotFoundError) as not_found:
        _get(stack, "0" * 64)
    assert not_found.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(InvalidArgumentError, match="image_id"):
        _get(stack, "not-a-hash")
    with stack.client() as client:
        ref = client.embed(png_bytes(shapes_rgb))
    with pytest.raises(InvalidArgumentError, match="vit_h"):
        _get(stack, ref.image_id, model="vit_h")
    assert _get(stack, ref.image_id, model="tiny").image_id == ref.image_id


def test_an_image_not_stored_is_embedded_first(stack: StackThread, shapes_rgb) -> None:
    with stack.client() as client:
        got = client.get_embedding(png_bytes(shapes_rgb))
        assert client.embed(png_bytes(shapes_rgb)).cached
    assert got.embedding.shape == (1, 256, 64, 64)


def test_tensor_array_refuses_a_bad_tensor() -> None:
    with pytest.raises(ValueError, match="bytes for shape"):
        tensor_array(common_pb2.Tensor(shape=[2, 2], dtype=common_pb2.D_TYPE_FLOAT32, data=b"x"))
    with pytest.raises(ValueError, match="dtype"):
        tensor_array(common_pb2.Tensor(shape=[1], data=b"\0\0\0\0"))

"""The embedding cache against a real redis-server: hits, TTL, restarts, model identity."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from samserve.core import keys
from samserve.core.models import load_model
from samserve_client import NotFoundError
from tests.conftest import png_bytes
from tests.stack import StackThread

pytestmark = pytest.mark.integration


def test_second_embed_is_cached(stack: StackThread, shapes_rgb: np.ndarray) -> None:
    with stack.client() as client:
        first = client.embed(png_bytes(shapes_rgb))
        second = client.embed(png_bytes(shapes_rgb))
    assert not first.cached
    assert second.cached
    assert first.image_id == second.image_id
    assert (first.height, first.width) == shapes_rgb.shape[:2]


def test_embedding_stored_as_one_float16_value(stack, shapes_rgb, redis_server) -> None:
    with stack.client() as client:
        ref = client.embed(png_bytes(shapes_rgb))
    r = redis.Redis(port=redis_server.port)
    value = r.get(keys.embedding_key(ref.model_id, ref.image_id))
    r.close()
    assert value is not None
    assert 256 * 64 * 64 * 2 < len(value) < 256 * 64 * 64 * 2 + 1024


def test_ttl_is_honoured(tiny_random, redis_url, shapes_rgb, redis_server) -> None:
    stack = StackThread(tiny_random, redis_url, ttl_seconds=1).start()
    try:
        with stack.client() as client:
            ref = client.embed(png_bytes(shapes_rgb))
            r = redis.Redis(port=redis_server.port)
            ttl = r.pttl(keys.embedding_key(ref.model_id, ref.image_id))
            r.close()
            assert 0 < ttl <= 1000
            time.sleep(1.5)
            # A fresh decoder (empty LRU) must not find the expired entry...
            stack.stop_decoder()
            stack.start_decoder()
        with stack.client() as client:
            with pytest.raises(NotFoundError):
                client.segment(ref, points=[[10, 10]])
            # ...and the embedding service encodes again.
            assert not client.embed(png_bytes(shapes_rgb)).cached
    finally:
        stack.close()


def test_entry_survives_decoder_restart(stack: StackThread, shapes_rgb: np.ndarray) -> None:
    with stack.client() as client:
        ref = client.embed(png_bytes(shapes_rgb))
        before = client.segment(ref, points=[[100, 100]], labels=[1])
    stack.stop_decoder()
    stack.start_decoder()
    with stack.client() as client:
        after = client.segment(ref, points=[[100, 100]], labels=[1])
    np.testing.assert_array_equal(before.masks, after.masks)
    np.testing.assert_allclose(before.scores, after.scores)


def test_two_models_never_share_entries(tiny_random, redis_url, shapes_rgb) -> None:
    other = load_model("tiny", "random", seed=1)
    assert other.model_id != tiny_random.model_id
    a = StackThread(tiny_random, redis_url).start()
    b = StackThread(other, redis_url).start()
    try:
        with a.client() as ca, b.client() as cb:
            ref_a = ca.embed(png_bytes(shapes_rgb))
            # Same image id, other model: a miss for b's decoder and a fresh encode for b.
            with pytest.raises(NotFoundError):
                cb.segment(ref_a, points=[[10, 10]])
            ref_b = cb.embed(png_bytes(shapes_rgb))
            assert ref_b.image_id == ref_a.image_id
            assert not ref_b.cached
            assert ref_b.model_id != ref_a.model_id
    finally:
        a.close()
        b.close()


def test_hash_first_flow_uploads_once(stack: StackThread, shapes_rgb: np.ndarray) -> None:
    with stack.client() as client:
        client.segment(shapes_rgb, points=[[100, 100]])  # NOT_FOUND -> upload -> segment
        ref = client.embed(shapes_rgb)
    assert ref.cached
    text = _metrics(stack.embedding.metrics_url)
    assert 'samserve_requests_total{code="OK",method="Embed"' in text


def _metrics(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()

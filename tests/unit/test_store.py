"""Stored value layout: round trip, and every mismatch reads as a miss."""

from __future__ import annotations

import numpy as np
import pytest

from samserve.core import keys
from samserve.core.store import Embedding, LruCache, deserialize, serialize


@pytest.fixture
def emb() -> Embedding:
    rng = np.random.default_rng(0)
    return Embedding(rng.standard_normal((256, 64, 64)).astype(np.float32), (480, 640), (768, 1024))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip(emb: Embedding, dtype: str) -> None:
    out = deserialize(serialize(emb, "tiny-abc", dtype), "tiny-abc")
    assert out is not None
    assert out.features.dtype == np.dtype(dtype)
    assert out.original_size == (480, 640)
    assert out.input_size == (768, 1024)
    tol = 1e-2 if dtype == "float16" else 0
    np.testing.assert_allclose(out.features.astype(np.float32), emb.features, atol=tol)


def test_other_model_is_a_miss(emb: Embedding) -> None:
    assert deserialize(serialize(emb, "tiny-abc"), "tiny-def") is None


def test_corruption_is_a_miss(emb: Embedding) -> None:
    value = bytearray(serialize(emb, "m"))
    value[-1] ^= 0xFF
    assert deserialize(bytes(value), "m") is None
    assert deserialize(b"garbage", "m") is None
    assert deserialize(b"", "m") is None
    assert deserialize(serialize(emb, "m")[:100], "m") is None


def test_other_layout_version_is_a_miss(emb: Embedding) -> None:
    value = bytearray(serialize(emb, "m"))
    value[6] = keys.LAYOUT_VERSION + 1
    assert deserialize(bytes(value), "m") is None


def test_keys_carry_model_and_layout() -> None:
    key = keys.embedding_key("tiny-abc", "0" * 64)
    assert key == f"samserve:emb:v{keys.LAYOUT_VERSION}:tiny-abc:{'0' * 64}"
    assert keys.is_image_id("a" * 64)
    assert not keys.is_image_id("A" * 64)
    assert not keys.is_image_id("a" * 63)


def test_lru_is_bounded() -> None:
    lru = LruCache(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1
    lru.put("c", 3)
    assert lru.get("b") is None
    assert lru.get("a") == 1
    assert len(lru) == 2

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
    assert key == f"samserve:emb:v{keys.LAYOUT_VERSION}:tiny-abc:{{{'0' * 64}}}"
    assert keys.is_image_id("a" * 64)
    assert not keys.is_image_id("A" * 64)
    assert not keys.is_image_id("a" * 63)


def test_an_images_keys_share_one_cluster_slot() -> None:
    """Entry, crops and lease carry the hash tag {image_id}: one slot on a Redis Cluster."""
    from redis.crc import key_slot

    image = "ab" * 32
    crop = keys.embedding_key("tiny-abc", keys.crop_id(image, [0, 0, 10, 20]))
    assert crop.endswith(f":{{{image}}}:crop:0,0,10,20")
    tagged = [keys.embedding_key("tiny-abc", image), crop, keys.lease_key("tiny-abc", image)]
    assert len({key_slot(k.encode()) for k in tagged}) == 1
    assert key_slot(keys.embedding_key("tiny-abc", "cd" * 32).encode()) != key_slot(
        tagged[0].encode()
    )


def test_lru_is_bounded() -> None:
    lru = LruCache(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1
    lru.put("c", 3)
    assert lru.get("b") is None
    assert lru.get("a") == 1
    assert len(lru) == 2


def _forge(header: object, payload: bytes = b"", *, raw_header: bytes | None = None) -> bytes:
    """A value with a chosen header (and a matching checksum, so only the header is wrong)."""
    import hashlib
    import json
    import struct

    if isinstance(header, dict):
        header = {**header, "sha256": hashlib.sha256(payload).hexdigest()}
    body = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<6sBI", b"SAMEMB", keys.LAYOUT_VERSION, len(body)) + body + payload


GOOD = {"model_id": "m", "dtype": "float16", "shape": [256, 64, 64],
        "original_size": [480, 640], "input_size": [768, 1024]}  # fmt: skip
PAYLOAD = np.zeros((256, 64, 64), np.float16).tobytes()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("the forged good value reads", None),
        ("absurd original size", _forge({**GOOD, "original_size": [10**9, 10**9]}, PAYLOAD)),
        ("zero original size", _forge({**GOOD, "original_size": [0, 640]}, PAYLOAD)),
        ("input size that does not fit", _forge({**GOOD, "input_size": [1024, 1024]}, PAYLOAD)),
        ("float sizes", _forge({**GOOD, "original_size": [480.0, 640.0]}, PAYLOAD)),
        ("huge shape", _forge({**GOOD, "shape": [2**32, 2**32, 64]}, PAYLOAD)),
        ("other shape", _forge({**GOOD, "shape": [256, 32, 128]}, PAYLOAD)),
        ("payload shorter than its shape", _forge(GOOD, PAYLOAD[:100])),
        ("unknown dtype", _forge({**GOOD, "dtype": "int8"}, PAYLOAD)),
        ("header a list", _forge([1, 2, 3], PAYLOAD)),
        ("header deeply nested", _forge(None, PAYLOAD, raw_header=b"[" * 100_000)),
        ("header over its size limit", _forge(None, PAYLOAD, raw_header=b" " * 5000)),
        ("header length past the value", _forge(None, b"", raw_header=b"{}")[:-1]),
    ],
)
def test_hostile_stored_values_are_misses(name: str, value: bytes | None) -> None:
    if value is None:
        assert deserialize(_forge(GOOD, PAYLOAD), "m") is not None, name
    else:
        assert deserialize(value, "m") is None, name

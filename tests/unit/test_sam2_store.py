"""SAM 2's stored value (layout 2): three tensors, round trip, and every mismatch is a miss."""

from __future__ import annotations

import numpy as np
import pytest

from samserve.core import keys
from samserve.core.store import SAM2_SHAPES, Embedding, deserialize, serialize

MODEL = "sam2.1_hiera_t-0123456789abcdef"


@pytest.fixture
def emb() -> Embedding:
    rng = np.random.default_rng(0)
    embed, *high = (rng.standard_normal(s).astype(np.float32) for s in SAM2_SHAPES)
    return Embedding(embed, (480, 640), (1024, 1024), tuple(high))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip(emb: Embedding, dtype: str) -> None:
    value = serialize(emb, MODEL, dtype)
    assert value[6] == keys.LAYOUT_VERSION_SAM2
    out = deserialize(value, MODEL)
    assert out is not None
    assert (out.original_size, out.input_size) == ((480, 640), (1024, 1024))
    tol = 1e-2 if dtype == "float16" else 0
    for got, want in zip(
        (out.features, *out.high_res_features), (emb.features, *emb.high_res_features), strict=True
    ):
        assert got.dtype == np.dtype(dtype) and got.shape == want.shape
        np.testing.assert_allclose(got.astype(np.float32), want, atol=tol)


def test_entry_size(emb: Embedding) -> None:
    """8 MiB in float16 (the README's model table), against 2 MiB for SAM 1."""
    payload = sum(int(np.prod(s)) for s in SAM2_SHAPES) * 2
    assert payload == 8 * 1024 * 1024
    assert 0 < len(serialize(emb, MODEL)) - payload < 512


def test_other_models_and_layouts_are_misses(emb: Embedding) -> None:
    value = serialize(emb, MODEL)
    assert deserialize(value, "sam2.1_hiera_t-fedcba9876543210") is None
    assert deserialize(value, "sam2.1_hiera_s-0123456789abcdef") is None
    # A SAM 1 reader never takes a SAM 2 entry, nor the other way round.
    sam1 = Embedding(emb.features, (480, 640), (768, 1024))
    assert deserialize(value, "tiny-0123456789abcdef") is None
    assert deserialize(serialize(sam1, "tiny-0123456789abcdef"), MODEL) is None
    # An old (layout 1) value under a SAM 2 model id reads as a miss.
    old = bytearray(value)
    old[6] = keys.LAYOUT_VERSION
    assert deserialize(bytes(old), MODEL) is None


def test_corruption_is_a_miss(emb: Embedding) -> None:
    value = bytearray(serialize(emb, MODEL))
    value[-1] ^= 0xFF
    assert deserialize(bytes(value), MODEL) is None
    assert deserialize(serialize(emb, MODEL)[:-2], MODEL) is None
    assert deserialize(b"garbage", MODEL) is None
    wrong_geometry = Embedding(emb.features, (480, 640), (768, 1024), emb.high_res_features)
    assert deserialize(serialize(wrong_geometry, MODEL), MODEL) is None


def test_keys_carry_the_sam2_layout() -> None:
    assert keys.embedding_key(MODEL, "0" * 64) == f"samserve:emb:v2:{MODEL}:{{{'0' * 64}}}"
    assert keys.embedding_key("tiny-abc", "0" * 64).startswith("samserve:emb:v1:")
    assert keys.layout_version("sam2_hiera_b+-0123456789abcdef") == keys.LAYOUT_VERSION_SAM2

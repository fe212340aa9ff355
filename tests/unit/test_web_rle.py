"""The page's COCO RLE (numpy only) against pycocotools, the reference."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from samserve_client.web import rle


@pytest.mark.parametrize("seed", range(40))
def test_matches_pycocotools(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 80, 2))
    mask = rng.random((h, w)) < rng.random()
    if seed % 4 == 0:
        mask[:] = seed % 8 == 0
    reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    ours = rle.encode(mask)
    assert ours == {"size": [h, w], "counts": reference["counts"].decode()}
    np.testing.assert_array_equal(rle.decode(ours), mask)


def test_long_runs_and_a_bad_size() -> None:
    mask = np.zeros((1500, 2250), dtype=bool)
    mask[100:1400, 7:2000] = True
    encoded = rle.encode(mask)
    assert (
        encoded["counts"]
        == coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
    )
    with pytest.raises(ValueError, match="pixels"):
        rle.decode({"size": [10, 10], "counts": encoded["counts"]})

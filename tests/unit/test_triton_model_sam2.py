"""The SAM 2 Triton model's work without Triton: Sam2BatchEncoder over sam2_tiny == the local
encoder (``SAM2ImagePredictor.set_image``), batched or not; the client's float resize + the
model's normalisation == ``SAM2Transforms``; bad inputs are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")

from samserve.core.models import load_model
from samserve.core.sam2.encoder import encode_sam2, resize_unnormalized, transforms
from samserve.core.variants import triton_model_name
from samserve.triton_model import EncoderParams, InputError
from samserve.triton_model_sam2 import PIXEL_MEAN, PIXEL_STD, Sam2BatchEncoder
from tools.shapes import make_shapes_image

# Batched float32 on CPU against one image: only summation order differs.
ATOL = 1e-4


@pytest.fixture(scope="module")
def encoder() -> Sam2BatchEncoder:
    params = EncoderParams(variant="sam2_tiny", checkpoint="random", device="cpu", warmup=False)
    return Sam2BatchEncoder(params, "cpu")


def test_model_names() -> None:
    assert triton_model_name("vit_h") == "sam_image_encoder_vit_h"
    assert triton_model_name("sam2.1_hiera_t") == "sam_image_encoder_sam2_1_hiera_t"
    assert triton_model_name("sam2.1_hiera_b+") == "sam_image_encoder_sam2_1_hiera_b_plus"
    assert triton_model_name("sam2_tiny") == "sam_image_encoder_sam2_tiny"


def test_client_resize_then_model_normalise_is_sam2_transforms() -> None:
    image = make_shapes_image(seed=1, height=120, width=200).image
    model = load_model("sam2_tiny", "random").sam
    want = transforms(model)(image.copy())
    x = torch.from_numpy(resize_unnormalized(image))
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    got = (x - mean) / std
    assert got.shape == (3, 1024, 1024)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_batch_equals_local_encoder(encoder: Sam2BatchEncoder) -> None:
    images = [
        make_shapes_image(seed=3, height=90, width=120).image,
        make_shapes_image(seed=4, height=150, width=100).image,
    ]
    model = load_model("sam2_tiny", "random").sam
    batch = np.stack([resize_unnormalized(im) for im in images])
    got = encoder.encode(batch)
    assert [a.shape for a in got] == [(2, 256, 64, 64), (2, 32, 256, 256), (2, 64, 128, 128)]
    assert encoder.model_id == load_model("sam2_tiny", "random").model_id
    for i, image in enumerate(images):
        want = encode_sam2(model, image.copy())
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g[i], w, rtol=0, atol=ATOL)


def test_bad_inputs_are_refused(encoder: Sam2BatchEncoder) -> None:
    with pytest.raises(InputError, match="float32"):
        encoder.check(np.zeros((1, 3, 1024, 1024), np.uint8))
    with pytest.raises(InputError, match=r"\[n, 3, 1024, 1024\]"):
        encoder.check(np.zeros((1, 1024, 1024, 3), np.float32))
    bad = np.zeros((1, 3, 1024, 1024), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="finite"):
        encoder.check(bad)


def test_a_sam1_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="not a SAM 2 model"):
        Sam2BatchEncoder(EncoderParams(variant="tiny", checkpoint="random"), "cpu")

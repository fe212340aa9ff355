"""The Triton model's logic without Triton: parameters, input checks, and encoding equal to
``SamPredictor``'s preprocess + encoder. The glue runs in tests/integration/test_triton.py."""

from __future__ import annotations

import numpy as np
import pytest

from samserve.core.encoder import encode_in_process, resize_for_encoder
from samserve.triton_model import BatchEncoder, EncoderParams, InputError
from tools.shapes import make_shapes_image


def _config(**params: str) -> dict:
    return {"parameters": {k: {"string_value": v} for k, v in params.items()}}


def test_params_from_config_and_defaults() -> None:
    p = EncoderParams.from_config(
        _config(variant="vit_h", checkpoint="/c.pth", seed="3", device="", warmup="false")
    )
    assert (p.variant, p.checkpoint, p.seed, p.device, p.warmup) == (
        "vit_h", "/c.pth", 3, "auto", False,
    )  # fmt: skip
    assert p.resolve_device(gpu_instance=True, device_id="1") == "cuda:1"
    assert p.resolve_device(gpu_instance=False, device_id="0") == "cpu"
    assert p.resolve_dtype("cpu") == "float32"
    assert p.resolve_dtype("cuda:0") == "bfloat16"
    with pytest.raises(ValueError, match="device"):
        EncoderParams("tiny", device="tpu").resolve_device(False, "0")
    with pytest.raises(ValueError, match="dtype"):
        EncoderParams("tiny", dtype="int8").resolve_dtype("cpu")


@pytest.fixture(scope="module")
def encoder() -> BatchEncoder:
    return BatchEncoder(EncoderParams("tiny", checkpoint="random", seed=0), "cpu")


def test_bad_tensors_are_input_errors(encoder: BatchEncoder) -> None:
    s = encoder.img_size
    good = np.zeros((1, s, s, 3), np.uint8)
    with pytest.raises(InputError, match="IMAGE must be uint8"):
        encoder.check(good.astype(np.float32), np.array([[s, s]], np.int32))
    with pytest.raises(InputError, match="IMAGE_SIZE must be"):
        encoder.check(good, np.array([s, s], np.int32))
    with pytest.raises(InputError, match="within"):
        encoder.check(good, np.array([[0, s]], np.int32))
    encoder.check(good, np.array([[s, 1]], np.int32))


def test_batch_equals_the_official_preprocess_and_encoder(encoder: BatchEncoder) -> None:
    """Two images of different sizes in one batch, each equal to encoding it alone."""
    from samserve.core.models import load_model

    sam = load_model("tiny", "random", seed=0).sam
    s = encoder.img_size
    inputs = [
        resize_for_encoder(make_shapes_image(seed=i, height=h, width=w).image)
        for i, (h, w) in enumerate([(120, 160), (200, 100)])
    ]
    padded = np.zeros((2, s, s, 3), np.uint8)
    sizes = np.zeros((2, 2), np.int32)
    for i, image in enumerate(inputs):
        padded[i, : image.shape[0], : image.shape[1]] = image
        sizes[i] = image.shape[:2]
    out = encoder.encode(padded, sizes)
    assert out.shape == (2, 256, 64, 64) and out.dtype == np.float32
    for i, image in enumerate(inputs):
        np.testing.assert_allclose(out[i], encode_in_process(sam, image), atol=1e-4)

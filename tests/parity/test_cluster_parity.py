"""Parity on a Redis Cluster, with a decoder-only model: the same masks as on a single Redis.

Both stacks serve the random ``tiny`` (float16 storage). On the cluster the decoder runs the
lean model (prompt encoder + mask decoder loaded from a checkpoint file, no image encoder),
whose model id must equal the whole model's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from samserve.core.models import DECODER, ImageEncoderStub, LoadedModel, load_model
from tests.conftest import png_bytes
from tests.parity.test_predict_parity import assert_parity
from tests.stack import StackThread
from tools.shapes import make_shapes_image

pytestmark = [pytest.mark.parity, pytest.mark.integration]


def test_cluster_and_lean_decoder_give_the_masks_of_a_single_redis(
    tiny_random: LoadedModel, redis_url: str, cluster_url: str, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "tiny.pth"
    torch.save(tiny_random.sam.state_dict(), checkpoint)
    lean = load_model("tiny", checkpoint, parts=DECODER)
    assert isinstance(lean.sam.image_encoder, ImageEncoderStub)
    assert lean.model_id == tiny_random.model_id

    sample = make_shapes_image(seed=7, height=240, width=320)
    ys, xs = np.nonzero(sample.masks[0])
    point = np.array([[float(np.median(xs)), float(np.median(ys))]])
    box = sample.boxes[1].astype(float)
    predictor = SamPredictor(tiny_random.sam)
    predictor.set_image(sample.image)

    results = []
    for url, decoder_model in ((redis_url, tiny_random), (cluster_url, lean)):
        stack = StackThread(tiny_random, url)
        stack.start_embedding()
        stack.model = decoder_model
        stack.start_decoder()
        try:
            with stack.client(timeout=120) as client:
                ref = client.embed(png_bytes(sample.image))
                by_point = client.segment(ref, points=point, labels=[1])
                by_box = client.segment(ref, box=box, multimask_output=False)
        finally:
            stack.close()
        assert_parity(by_point, *predictor.predict(point, np.array([1])))
        assert_parity(by_box, *predictor.predict(box=box, multimask_output=False))
        results.append((by_point, by_box))
    (single_point, single_box), (cluster_point, cluster_box) = results
    np.testing.assert_array_equal(cluster_point.masks, single_point.masks)
    np.testing.assert_array_equal(cluster_box.masks, single_box.masks)
    np.testing.assert_allclose(cluster_point.scores, single_point.scores, atol=1e-6)

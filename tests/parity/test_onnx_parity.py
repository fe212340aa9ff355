"""The exported ONNX decoder on GetEmbedding's tensor == served Segment == SamPredictor.predict.

One decoder file, exported once, answers square, landscape and portrait images (the official
``SamOnnxModel`` exported the same way does not: the last test shows the frozen crop). Every
prompt kind: a point, points with a negative, a box, a box with points, a mask_input chain.
Tolerance as docs/design.md: IoU >= 0.995, |score difference| <= 1e-3. The shape-trained tiny
stores float32 (its small masks' edge logits sit within float16 rounding of 0, as in
test_predict_parity.py); the random tiny stores float16.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from segment_anything import SamPredictor

from samserve.core import onnx_export
from samserve.core.models import LoadedModel
from samserve_client import EmbeddingRef, SamClient
from samserve_client._embedding import EmbeddingTensors
from samserve_client.onnx import OnnxDecoder
from tests.conftest import png_bytes
from tests.parity.test_predict_parity import MAX_SCORE_DIFF, MIN_IOU, iou
from tests.stack import StackThread
from tools.shapes import make_shapes_image

pytestmark = [pytest.mark.parity, pytest.mark.integration, pytest.mark.timeout(600)]

#: (height, width): square, landscape, portrait.
SIZES = [(256, 256), (240, 320), (320, 240)]


@dataclass
class Model:
    """One model's stack, exported decoder and predictor."""

    model: LoadedModel
    stack: StackThread
    client: SamClient
    decoder: OnnxDecoder
    out: Path


@pytest.fixture(scope="module", params=["tiny_trained", "tiny_random"])
def exported(request, redis_server, tmp_path_factory) -> Iterator[Model]:
    model: LoadedModel = request.getfixturevalue(request.param)
    out = tmp_path_factory.mktemp(f"onnx-{request.param}")
    onnx_export.export(model, out, quantize=False)
    dtype = "float32" if request.param == "tiny_trained" else "float16"
    stack = StackThread(model, redis_server.url, store_dtype=dtype).start()
    client = stack.client(timeout=120)
    yield Model(model, stack, client, OnnxDecoder(out), out)
    client.close()
    stack.close()


@dataclass
class Image:
    rgb: np.ndarray
    masks: np.ndarray
    ref: EmbeddingRef
    tensors: EmbeddingTensors
    predictor: SamPredictor


def _image(m: Model, size: tuple[int, int]) -> Image:
    sample = make_shapes_image(seed=11, height=size[0], width=size[1])
    ref = m.client.embed(png_bytes(sample.image))
    predictor = SamPredictor(m.model.sam)
    predictor.set_image(sample.image)
    return Image(sample.image, sample.masks, ref, m.client.get_embedding(ref), predictor)


def _center(masks: np.ndarray, i: int) -> list[float]:
    ys, xs = np.nonzero(masks[i])
    k = len(xs) // 2
    order = np.lexsort((xs, ys))
    return [float(xs[order][k]), float(ys[order][k])]


def _bbox(masks: np.ndarray, i: int) -> list[float]:
    ys, xs = np.nonzero(masks[i])
    return [float(xs.min()) - 3, float(ys.min()) - 3, float(xs.max()) + 3, float(ys.max()) + 3]


def _prompts(img: Image) -> dict[str, dict]:
    a, b = _center(img.masks, 0), _center(img.masks, 1)
    return {
        "point": {"points": [a], "labels": [1], "multimask_output": True},
        "points_with_negative": {"points": [a, b], "labels": [1, 0], "multimask_output": False},
        "box": {"box": _bbox(img.masks, 0), "multimask_output": False},
        "box_with_points": {
            "points": [a, b],
            "labels": [1, 0],
            "box": _bbox(img.masks, 0),
            "multimask_output": True,
        },
    }


def _same(got, masks: np.ndarray, scores: np.ndarray, what: str) -> None:
    assert got.masks.shape == masks.shape, what
    for k in range(len(masks)):
        assert iou(got.masks[k], masks[k]) >= MIN_IOU, f"{what}: mask {k}"
        assert abs(float(got.scores[k]) - float(scores[k])) <= MAX_SCORE_DIFF, f"{what}: score {k}"


def _as_np(kwargs: dict) -> dict:
    """SamPredictor.predict's names for the SDK's keyword arguments."""
    names = {"points": "point_coords", "labels": "point_labels"}
    return {names.get(k, k): (np.array(v) if isinstance(v, list) else v) for k, v in kwargs.items()}


@pytest.mark.parametrize("size", SIZES, ids=["square", "landscape", "portrait"])
def test_every_prompt_kind_matches_segment_and_predictor(exported: Model, size) -> None:
    img = _image(exported, size)
    assert (img.tensors.height, img.tensors.width) == size
    for name, kwargs in _prompts(img).items():
        local = exported.decoder.predict(img.tensors, **kwargs)
        assert local.masks.shape[1:] == size
        served = exported.client.segment(img.ref, **kwargs)
        _same(local, served.masks, served.scores, f"{name} vs Segment")
        masks, scores, _ = img.predictor.predict(**_as_np(kwargs))
        _same(local, masks, scores, f"{name} vs SamPredictor")


@pytest.mark.parametrize("size", SIZES, ids=["square", "landscape", "portrait"])
def test_mask_input_chain(exported: Model, size) -> None:
    img = _image(exported, size)
    a, b = _center(img.masks, 0), _center(img.masks, 1)
    first = exported.decoder.predict(img.tensors, points=[a], labels=[1])
    _, _, ref_logits = img.predictor.predict(np.array([a]), np.array([1]))
    best = int(np.argmax(first.scores))
    # Each side chains from its own previous logits, as an interactive client does.
    np.testing.assert_allclose(first.low_res_logits[best], ref_logits[best], atol=2e-3)
    step = {"points": [a, b], "labels": [1, 0], "multimask_output": False}
    local = exported.decoder.predict(img.tensors, mask_input=first.low_res_logits[best], **step)
    served = exported.client.segment(img.ref, mask_input=first.low_res_logits[best][None], **step)
    _same(local, served.masks, served.scores, "chain vs Segment")
    masks, scores, _ = img.predictor.predict(mask_input=ref_logits[best][None], **_as_np(step))
    _same(local, masks, scores, "chain vs SamPredictor")


def test_the_official_export_freezes_the_crop(exported: Model, tmp_path, monkeypatch) -> None:
    """What the subclass fixes: the official model, traced the same way, crops every image as
    if it had the example's 2:3 size. The parity tests above would catch it."""
    from segment_anything.utils.onnx import SamOnnxModel

    monkeypatch.setattr(onnx_export, "SizeGeneralSamOnnxModel", SamOnnxModel)
    onnx_export.export(exported.model, tmp_path, quantize=False)
    official = OnnxDecoder(tmp_path)
    img = _image(exported, (256, 256))
    point = {"points": [_center(img.masks, 0)], "labels": [1]}
    ours = exported.decoder.predict(img.tensors, **point)
    frozen = official.predict(img.tensors, **point)
    assert min(iou(a, b) for a, b in zip(ours.masks, frozen.masks, strict=True)) < 0.9


def test_model_mismatch_is_refused(exported: Model) -> None:
    img = _image(exported, (256, 256))
    other = dataclasses.replace(img.tensors, model_id="vit_h-0000")
    with pytest.raises(ValueError, match="export the decoder from the served weights"):
        exported.decoder.predict(other, points=[[10, 10]])
    with pytest.raises(ValueError, match="points or a box"):
        exported.decoder.predict(img.tensors)

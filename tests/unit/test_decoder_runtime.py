"""The mask decoder's runtimes: ONNX Runtime answers what the torch folded decoder answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samserve.core import decoder_runtime
from samserve.core.decoder_runtime import (
    OrtDecoder,
    make_runtime,
    resolve_runtime,
    runtime_name,
    torch_runtime,
)
from samserve.core.errors import ConfigError
from samserve.core.models import LoadedModel
from samserve.core.prefix import ImagePrefix, build_prefix, decode

pytestmark = pytest.mark.skipif(
    not decoder_runtime.onnxruntime_available(), reason="onnxruntime is not installed"
)

#: Float32 logits through another kernel library: only summation order differs.
LOGITS_ATOL = 2e-4
IOU_ATOL = 1e-5


@pytest.fixture(scope="module")
def prefix(tiny_random: LoadedModel) -> ImagePrefix:
    sam = tiny_random.sam
    rng = np.random.default_rng(3)
    with torch.inference_mode():
        dense_pe = sam.prompt_encoder.get_dense_pe()
        features = torch.from_numpy(rng.standard_normal((1, 256, 64, 64), dtype=np.float32))
        return build_prefix(sam, features, dense_pe)


@pytest.fixture(scope="module")
def ort(tiny_random: LoadedModel) -> OrtDecoder:
    return OrtDecoder(tiny_random.sam, tiny_random.model_id)


def _sparse(model: LoadedModel, prompts: int, points: int, box: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(prompts * 100 + points)
    coords = torch.rand(prompts, points, 2, generator=gen) * 1000
    labels = torch.randint(0, 2, (prompts, points), generator=gen, dtype=torch.int)
    boxes = torch.tensor([[100.0, 200.0, 600.0, 700.0]]).expand(prompts, 4) if box else None
    with torch.inference_mode():
        sparse, _ = model.sam.prompt_encoder(points=(coords, labels), boxes=boxes, masks=None)
    return sparse


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize(
    ("prompts", "points", "box"),
    [(1, 2, False), (1, 1, True), (1, 5, True), (64, 2, False), (3, 7, False)],
)
def test_onnxruntime_equals_torch(
    tiny_random: LoadedModel, prefix: ImagePrefix, ort: OrtDecoder,
    prompts: int, points: int, box: bool, multimask: bool,
) -> None:  # fmt: skip
    """Any number of prompts and tokens (the graph's dynamic axes), one mask or three."""
    sparse = _sparse(tiny_random, prompts, points, box)
    with torch.inference_mode():
        want_masks, want_iou = decode(tiny_random.sam, prefix, sparse, multimask, fold=False)
        masks, iou = ort(prefix, sparse, multimask)
    assert masks.shape == want_masks.shape and iou.shape == want_iou.shape
    assert torch.allclose(masks, want_masks, atol=LOGITS_ATOL, rtol=0)
    assert torch.allclose(iou, want_iou, atol=IOU_ATOL, rtol=0)


def test_many_tokens_take_the_torch_path(
    tiny_random: LoadedModel, prefix: ImagePrefix, ort: OrtDecoder
) -> None:
    """Past what folding pays for, the official layer order runs (bit for bit torch)."""
    sparse = _sparse(tiny_random, 1, 20, False)
    with torch.inference_mode():
        want = decode(tiny_random.sam, prefix, sparse, True)
        got = ort(prefix, sparse, True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_one_session_per_thread_count(ort: OrtDecoder) -> None:
    assert ort.graph.session(1) is ort.graph.session(1)
    assert ort.graph.session(2) is not ort.graph.session(1)
    assert ort.graph.session(2).get_session_options().intra_op_num_threads == 2


def test_runtime_choice(tiny_random: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    sam, model_id = tiny_random.sam, tiny_random.model_id
    assert resolve_runtime("auto") == "onnxruntime"
    assert runtime_name(make_runtime(sam, "auto", model_id)) == "onnxruntime"
    assert runtime_name(make_runtime(sam, "torch", model_id)) == "torch"
    assert runtime_name(torch_runtime(sam)) == "torch"
    with pytest.raises(ConfigError, match="--decoder-runtime"):
        resolve_runtime("tensorrt")
    monkeypatch.setattr(decoder_runtime, "onnxruntime_available", lambda: False)
    assert resolve_runtime("auto") == "torch"
    with pytest.raises(ConfigError, match="--decoder-runtime onnxruntime: onnxruntime is not"):
        resolve_runtime("onnxruntime")


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", ["point", "box", "mask", "batch"])
@pytest.mark.parametrize("variant", ["sam2_tiny", "sam2.1_hiera_t"])
def test_sam2_folded_and_onnxruntime_equal_the_official_decoder(
    variant: str, multimask: bool, prompt: str
) -> None:
    """SAM 2's decoder over the per-image prefix, folded, in torch and on ONNX Runtime: what the
    official module answers (SAM 2.1's single-mask choice by stability included); a mask input
    takes the official path."""
    import dataclasses

    from samserve.core.models import load_model
    from samserve.core.sam2.decoder import (
        Sam2OrtDecoder,
        decode_sam2,
        high_res_features,
        prepare_sam2,
    )
    from samserve.core.store import Embedding

    model = load_model(variant, "random", seed=0)
    rng = np.random.default_rng(5)
    with torch.inference_mode():
        dense_pe = model.sam.sam_prompt_encoder.get_dense_pe()
        c, h, w = dense_pe.shape[1:]
        emb = Embedding(
            rng.standard_normal((c, h, w), dtype=np.float32), (480, 640), (768, 1024),
            (rng.standard_normal((c // 8, 4 * h, 4 * w), dtype=np.float32),
             rng.standard_normal((c // 4, 2 * h, 2 * w), dtype=np.float32)),
        )  # fmt: skip
        ready = prepare_sam2(model.sam, dense_pe, emb)
        maps = tuple(torch.from_numpy(t)[None] for t in emb.high_res_features)
        assert all(
            torch.equal(a, b) for a, b in zip(high_res_features(ready), maps, strict=True)
        )  # the maps kept in folded order come back bit for bit
        official = dataclasses.replace(
            ready, prefix=None, high_res_features=maps, high_res_pixels=()
        )
        runtime = Sam2OrtDecoder(model.sam, model.model_id, dense_pe)
        b = 5 if prompt == "batch" else 1
        gen = torch.Generator().manual_seed(7)
        points = (torch.rand(b, 2, 2, generator=gen) * 1000, torch.tensor([[1, 0]] * b))
        boxes = torch.tensor([[100.0, 150.0, 700.0, 800.0]]) if prompt == "box" else None
        mask = torch.randn(1, 1, 256, 256, generator=gen) if prompt == "mask" else None
        want = decode_sam2(model.sam, dense_pe, official, points, boxes, mask, multimask)
        for run in (None, runtime):
            got = decode_sam2(model.sam, dense_pe, ready, points, boxes, mask, multimask, run)
            assert got[0].shape == want[0].shape
            assert torch.allclose(got[0], want[0], atol=LOGITS_ATOL, rtol=0)
            assert torch.allclose(got[1], want[1], atol=IOU_ATOL, rtol=0)


def test_decoders_say_where_they_run(tiny_random: LoadedModel) -> None:
    from samserve.core.decoder import Decoder
    from samserve.core.metrics import Metrics

    for runtime in ("onnxruntime", "torch"):
        dec = Decoder(variant="tiny", model_id=tiny_random.model_id, sam=tiny_random.sam,
                      store=None, metrics=Metrics(), runtime=runtime)  # type: ignore[arg-type]  # fmt: skip
        assert dec.runtime_label == runtime

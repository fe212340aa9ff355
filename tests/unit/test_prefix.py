"""The per-image decoder prefix gives what the official MaskDecoder gives."""

from __future__ import annotations

import pytest
import torch

from samserve.core.models import load_model
from samserve.core.prefix import build_prefix, decode


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("n_points", [2, 12])
@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("n_prompts", [1, 3])
def test_prefix_decode_equals_official(
    multimask: bool, n_prompts: int, n_points: int, fold: bool
) -> None:
    """Folded (``core/folded.py``) or not; 12 points make too many tokens to fold (fallback)."""
    sam = load_model("tiny", "random", seed=0).sam
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, 256, 64, 64, generator=gen)
    coords = torch.rand(n_prompts, n_points, 2, generator=gen) * 1024
    labels = torch.tensor([[1, 0] * (n_points // 2)] * n_prompts, dtype=torch.int)
    with torch.inference_mode():
        pe = sam.prompt_encoder.get_dense_pe()
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        ref_masks, ref_iou = sam.mask_decoder(
            image_embeddings=features,
            image_pe=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        masks, iou = decode(sam, build_prefix(sam, features, pe), sparse, multimask, fold=fold)
    assert masks.shape == ref_masks.shape
    torch.testing.assert_close(masks, ref_masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-5)

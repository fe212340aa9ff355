"""Upsampling a few masks at a time gives the official postprocess_masks, bit for bit."""

from __future__ import annotations

import pytest
import torch

from samserve.core.errors import DeadlineExceeded
from samserve.core.fullres import Cancel, masks_per_piece, upscaled
from samserve.core.models import load_model


def test_masks_per_piece_follows_the_budget() -> None:
    assert masks_per_piece(4000, 6000, 1) == 1
    big = masks_per_piece(4000, 6000, 1 << 30)
    small = masks_per_piece(240, 320, 1 << 30)
    assert 1 <= big < small


@pytest.mark.parametrize("budget", [1, 1 << 24, 1 << 30])
def test_pieces_equal_the_whole(budget: int) -> None:
    sam = load_model("tiny", "random").sam
    torch.manual_seed(0)
    logits = torch.randn(7, 256, 256)
    whole = sam.postprocess_masks(logits[None], (768, 1024), (300, 400))[0]
    got = torch.empty_like(whole)
    for start, piece in upscaled(sam, logits, (768, 1024), (300, 400), budget):
        got[start : start + len(piece)] = piece
    assert torch.equal(got, whole)


def test_cancel_stops_between_pieces() -> None:
    sam = load_model("tiny", "random").sam
    cancel = Cancel()
    pieces = upscaled(sam, torch.zeros(3, 256, 256), (768, 1024), (300, 400), 1, cancel)
    next(pieces)
    cancel.set()
    with pytest.raises(DeadlineExceeded):
        next(pieces)


@pytest.mark.parametrize(
    ("original", "input_size"),
    [((1200, 1800), (683, 1024)), ((480, 640), (768, 1024)), ((640, 480), (1024, 768)),
     ((333, 1000), (341, 1024)), ((512, 512), (1024, 1024)), ((7, 3000), (3, 1024))],
)  # fmt: skip
def test_postprocess_masks_equals_official(
    original: tuple[int, int], input_size: tuple[int, int]
) -> None:
    """The cropped first upsampling gives exactly ``Sam.postprocess_masks``'s values."""
    from samserve.core.fullres import postprocess_masks

    sam = load_model("tiny", "random", seed=0).sam
    low = torch.randn(3, 1, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = sam.postprocess_masks(low, input_size, original)
        ours = postprocess_masks(sam, low, input_size, original)
    assert torch.equal(ours, ref)

"""Full-resolution work in bounded pieces, with a way to stop between pieces.

The official code upsamples a whole batch of masks to the original image size at once: 64 grid
points x 3 masks on a 24 MP photo is 18 GB of float32. Upsampling is per mask (bilinear
interpolation never mixes masks), so doing it a few masks at a time gives the same masks with
memory bounded by a budget. :class:`Cancel` lets the async side stop a worker thread's loop
between pieces when its caller has gone.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import torch
from segment_anything.modeling import Sam
from torch.nn import functional

from samserve.core.errors import DeadlineExceeded

#: Bytes one mask costs at its peak per original-image pixel while it is upsampled and encoded:
#: the float32 logits (4), their threshold and stability temporaries, the binary mask, its
#: uncropped copy and the RLE's transposed copy and difference (1 each).
BYTES_PER_MASK_PIXEL = 4 + 6
#: The fixed part: the 1024x1024 float32 intermediate of ``Sam.postprocess_masks``.
BYTES_PER_MASK_FIXED = 1024 * 1024 * 4


def masks_per_piece(height: int, width: int, budget_bytes: int) -> int:
    """How many masks of (height, width) fit the budget at once (at least one)."""
    per_mask = height * width * BYTES_PER_MASK_PIXEL + BYTES_PER_MASK_FIXED
    return max(1, budget_bytes // per_mask)


class Cancel:
    """Set from the event loop when a caller leaves; checked by worker threads between pieces."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise when the work should stop (its caller cancelled or ran out of time)."""
        if self._event.is_set():
            raise DeadlineExceeded("the caller cancelled or its deadline passed")


def upscaled(
    sam: Sam,
    low_res: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    budget_bytes: int,
    cancel: Cancel | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """``Sam.postprocess_masks`` of (N, 256, 256) logits, a piece at a time.

    Yields:
        (index of the piece's first mask, (k, H, W) float32 logits at the original size).
    """
    k = masks_per_piece(*original_size, budget_bytes)
    for start in range(0, low_res.shape[0], k):
        if cancel is not None:
            cancel.check()
        piece = low_res[start : start + k, None]
        yield start, postprocess_masks(sam, piece, input_size, original_size)[:, 0]


def postprocess_masks(
    sam: Sam, masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """``Sam.postprocess_masks``, the same values, with its first upsampling (to the encoder's
    square input) computed only over the part its crop keeps.

    Bilinear upsampling by an integer factor reads, for output row ``i``, input rows
    ``floor((i + 0.5) / f - 0.5)`` and the next: the first ``ceil(h / f) + 1`` input rows give
    the first ``h`` output rows exactly as the whole input does (same scale, same weights).
    """
    size = int(sam.image_encoder.img_size)
    low = masks.shape[-1]
    if size % low or masks.shape[-2] != low:
        official: torch.Tensor = sam.postprocess_masks(masks, input_size, original_size)
        return official
    f = size // low
    rows = min(low, math.ceil(input_size[0] / f) + 2)
    cols = min(low, math.ceil(input_size[1] / f) + 2)
    up = functional.interpolate(
        masks[..., :rows, :cols], scale_factor=f, mode="bilinear", align_corners=False
    )
    up = up[..., : input_size[0], : input_size[1]]
    return functional.interpolate(up, original_size, mode="bilinear", align_corners=False)

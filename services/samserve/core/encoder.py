"""The image encoder seam: the embedding service hands over a resized uint8 image.

``Encoder.encode`` takes the image exactly as ``ResizeLongestSide.apply_image`` leaves it
((h, w, 3) uint8 RGB, long side 1024) so the wire to a remote encoder (Triton) stays cheap;
normalisation and padding happen inside the encoder, as ``Sam.preprocess`` does them.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from samserve.core.store import Embedding


class Encoder(Protocol):
    """Turns a resized uint8 RGB image into a (256, 64, 64) float32 embedding (SAM 2: the
    image as decoded into the embedding and both high-resolution maps)."""

    async def encode(
        self, input_image: np.ndarray, timeout: float | None = None
    ) -> np.ndarray | tuple[np.ndarray, ...]:
        """Embed one image; ``timeout`` is what remains of the caller's deadline (None: the
        encoder's own limit). A SAM 2 encoder returns three tensors (``core/family.py``)."""
        ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


def resize_for_encoder(image: np.ndarray, img_size: int = 1024) -> np.ndarray:
    """Resize (H, W, 3) uint8 RGB so the long side is ``img_size``, as SamPredictor does."""
    resized: np.ndarray = ResizeLongestSide(img_size).apply_image(image)
    return resized


def encode_in_process(sam: Sam, input_image: np.ndarray) -> np.ndarray:
    """``SamPredictor.set_torch_image`` without the predictor: preprocess + image encoder."""
    x = torch.as_tensor(input_image).permute(2, 0, 1).contiguous()[None, :, :, :]
    with torch.inference_mode():
        features = sam.image_encoder(sam.preprocess(x.float()))
    out: np.ndarray = features[0].numpy()
    return out


class LocalEncoder:
    """Runs the official image encoder in this process, one image at a time, off the loop."""

    def __init__(self, sam: Sam) -> None:
        self.sam = sam
        # One worker: torch already uses every core for one image; more would only thrash.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")

    async def encode(self, input_image: np.ndarray, timeout: float | None = None) -> np.ndarray:
        # A run in progress cannot be stopped; the caller's deadline is checked before it.
        loop = asyncio.get_running_loop()
        features: np.ndarray = await loop.run_in_executor(
            self._pool, encode_in_process, self.sam, input_image
        )
        return features

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        self._pool.shutdown(wait=True)


def make_embedding(
    features: np.ndarray, original_size: tuple[int, int], input_image: np.ndarray
) -> Embedding:
    """Bundle encoder output with the geometry the decoder needs."""
    return Embedding(
        features=features,
        original_size=original_size,
        input_size=(int(input_image.shape[0]), int(input_image.shape[1])),
    )

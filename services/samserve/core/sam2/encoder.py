"""SAM 2's image encoder in process: ``SAM2ImagePredictor.set_image`` without the predictor.

The encoder takes the decoded RGB image as it is (SAM 2 resizes to a 1024 square in float,
aspect ratio not kept, so a uint8 resize on the way would change the input) and returns the
three tensors the decoder needs: the (256, 64, 64) image embedding (``no_mem_embed`` added, as
the predictor adds it) and the high-resolution maps (32, 256, 256) and (64, 128, 128).
"""

from __future__ import annotations

import asyncio
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from samserve.core.store import SAM2_INPUT_SIZE, Embedding

#: Spatial sizes of the backbone's three levels, finest first (``SAM2ImagePredictor``).
BB_FEAT_SIZES = ((256, 256), (128, 128), (64, 64))


def encoder_input(image: np.ndarray) -> np.ndarray:
    """What SAM 2's encoder takes: the (H, W, 3) uint8 RGB image itself (a writable copy when
    it is read-only: ``ToTensor`` wraps it without copying)."""
    return image if image.flags.writeable else image.copy()


def transforms(model: Any) -> Any:
    """The official ``SAM2Transforms`` the predictor builds for ``model`` (default settings).

    It scripts its resize with ``torch.jit.script``, which torch 2.14 calls deprecated: the
    warning is the official package's, not ours, so it is not shown.
    """
    from sam2.utils.transforms import SAM2Transforms

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script", category=FutureWarning)
        return SAM2Transforms(resolution=model.image_size, mask_threshold=0.0)


def resize_unnormalized(image: np.ndarray, resolution: int = 1024) -> np.ndarray:
    """``SAM2Transforms`` without its final ``Normalize``: ``ToTensor`` (0..1, CHW) then
    ``Resize((resolution, resolution))``, the same torchvision ops in the same order, so the
    result normalised is exactly what ``SAM2Transforms`` gives. (3, resolution, resolution)
    float32: what a remote encoder (Triton) takes; it normalises."""
    from torchvision.transforms import Resize, ToTensor

    with torch.inference_mode():
        x = Resize((resolution, resolution))(ToTensor()(encoder_input(image)))
    out: np.ndarray = x.numpy()
    return out


def encode_sam2(
    model: Any, image: np.ndarray, sam2_transforms: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image embedding and high-resolution maps of one (H, W, 3) uint8 RGB image, float32,
    exactly as ``SAM2ImagePredictor.set_image`` computes ``_features`` (``sam2_transforms``:
    :func:`transforms` of ``model``, built once by the caller; None builds it)."""
    tf = sam2_transforms if sam2_transforms is not None else transforms(model)
    with torch.inference_mode():
        x = tf(image)[None, ...]
        backbone_out = model.forward_image(x)
        _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
        if model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
        feats = [
            feat.permute(1, 2, 0).reshape(1, -1, *size)
            for feat, size in zip(vision_feats[::-1], BB_FEAT_SIZES[::-1], strict=True)
        ][::-1]
    embed, high0, high1 = (f[0].numpy() for f in (feats[-1], feats[0], feats[1]))
    return embed, high0, high1


def make_embedding(
    features: np.ndarray | tuple[np.ndarray, ...],
    original_size: tuple[int, int],
    input_image: np.ndarray,
) -> Embedding:
    """Bundle the encoder's three tensors with the geometry (the input is always 1024x1024)."""
    if not isinstance(features, tuple) or len(features) != 3:
        raise ValueError("a SAM 2 encoder returns three tensors")
    return Embedding(
        features=features[0],
        original_size=original_size,
        input_size=SAM2_INPUT_SIZE,
        high_res_features=features[1:],
    )


class Sam2LocalEncoder:
    """Runs SAM 2's image encoder in this process, one image at a time, off the loop."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._transforms = transforms(model)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")

    async def encode(
        self, input_image: np.ndarray, timeout: float | None = None
    ) -> tuple[np.ndarray, ...]:
        loop = asyncio.get_running_loop()
        features: tuple[np.ndarray, ...] = await loop.run_in_executor(
            self._pool, encode_sam2, self.model, input_image, self._transforms
        )
        return features

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        self._pool.shutdown(wait=True)

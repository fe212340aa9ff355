"""Result and prompt types returned and accepted by the SDK (frozen dataclasses over numpy)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class EmbeddingRef:
    """A stored embedding: pass it to ``segment`` instead of the image to skip hashing.

    Attributes:
        image_id: hex sha256 of the encoded image bytes that were sent.
        cached: True when the embedding was already stored (no encoder run).
        model_id: model identity (variant and weights checksum prefix).
        height: original image height in pixels (after EXIF orientation).
        width: original image width in pixels.
    """

    image_id: str
    cached: bool
    model_id: str
    height: int
    width: int


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt for :meth:`SamClient.segment_prompts`.

    Attributes:
        points: (N, 2) array of (x, y) pixel coordinates in the original image, or None.
        labels: (N,) array, 1 = foreground, 0 = background; defaults to all 1.
        box: (4,) XYXY pixel box, or None.
        mask_input: (1, 256, 256) or (256, 256) float32 logits, e.g. a previous
            ``low_res_logits[i]``, or None.
    """

    points: npt.ArrayLike | None = None
    labels: npt.ArrayLike | None = None
    box: npt.ArrayLike | None = None
    mask_input: npt.ArrayLike | None = None


@dataclass(frozen=True, slots=True)
class SegmentResult:
    """Masks for one prompt, as ``SamPredictor.predict`` returns them.

    Attributes:
        masks: bool (K, H, W) at the original image size; K = 3 with multimask output, else 1.
        scores: float32 (K,) predicted IoU of each mask.
        low_res_logits: float32 (K, 256, 256) logits, usable as the next ``mask_input``;
            an empty (0, 256, 256) array when they were not requested.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray = field(
        default_factory=lambda: np.zeros((0, 256, 256), dtype=np.float32)
    )


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """The model an embedding service serves (``SamClient.model_info``).

    Attributes:
        variant: variant name, e.g. ``"vit_h"``, ``"tiny"``, ``"sam2.1_hiera_l"``.
        model_id: model identity used in cache keys (variant and weights checksum prefix).
        weights_sha256: full hex sha256 of the weights.
        source: where the weights came from (``"shipped"``, ``"random(seed=N)"``, ...).
        family: ``"sam1"`` or ``"sam2"``: which official package the model follows, hence which
            generator parameters ``segment_everything`` accepts; empty from a server that does
            not say.
    """

    variant: str
    model_id: str
    weights_sha256: str
    source: str
    family: str

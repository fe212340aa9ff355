"""Model families: what differs between SAM 1 (``segment_anything``) and SAM 2 / 2.1 (``sam2``)
on the embedding side, in one place.

A family says what the image encoder takes (SAM 1: the uint8 image resized to a long side of
1024; SAM 2: the image itself) and how the encoder's output becomes a stored
:class:`~samserve.core.store.Embedding` (SAM 2 adds two high-resolution maps). The decoder side
is :class:`~samserve.core.decoder.Decoder` for SAM 1 and
:class:`~samserve.core.sam2.decoder.Sam2Decoder` for SAM 2; ``compose.py`` picks them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from samserve.core import encoder
from samserve.core.sam2 import encoder as sam2_encoder
from samserve.core.store import Embedding

#: What an image encoder returns: SAM 1's embedding, or SAM 2's three tensors.
EncoderOutput = np.ndarray | tuple[np.ndarray, ...]


@dataclass(frozen=True, slots=True)
class Family:
    """One model family's embedding-side behaviour.

    Attributes:
        name: ``"sam1"`` or ``"sam2"`` (what GetModelInfo says).
        encoder_input: decoded (H, W, 3) uint8 RGB -> what ``Encoder.encode`` takes.
        embedding: (encoder output, original (H, W), encoder input) -> the stored embedding.
    """

    name: str
    encoder_input: Callable[[np.ndarray], np.ndarray]
    embedding: Callable[[EncoderOutput, tuple[int, int], np.ndarray], Embedding]


def _sam1_embedding(
    features: EncoderOutput, original_size: tuple[int, int], input_image: np.ndarray
) -> Embedding:
    if isinstance(features, tuple):
        raise ValueError("a SAM 1 encoder returns one tensor")
    return encoder.make_embedding(features, original_size, input_image)


SAM1 = Family("sam1", encoder.resize_for_encoder, _sam1_embedding)
SAM2 = Family("sam2", sam2_encoder.encoder_input, sam2_encoder.make_embedding)
FAMILIES = {f.name: f for f in (SAM1, SAM2)}


def family(name: str) -> Family:
    """The family called ``name`` (``LoadedModel.family``)."""
    return FAMILIES[name]

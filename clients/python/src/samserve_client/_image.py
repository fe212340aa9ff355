"""Turn what a user holds (path, bytes, PIL image, ndarray) into encoded bytes and their id."""

from __future__ import annotations

import hashlib
import io
import os
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:
    from PIL import Image as PILImage

ImageLike = Union[str, os.PathLike[str], bytes, "PILImage.Image", np.ndarray]


def image_id(data: bytes) -> str:
    """The id of an image: hex sha256 of its encoded bytes (what the server recomputes)."""
    return hashlib.sha256(data).hexdigest()


def to_bytes(image: ImageLike) -> bytes:
    """Encoded bytes for ``image``.

    A path or bytes is sent as it is (the server applies EXIF orientation). A PIL image or an
    (H, W, 3) uint8 RGB array is encoded losslessly as PNG.
    """
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        with open(image, "rb") as f:
            return f.read()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}"
            )
        from PIL import Image

        image = Image.fromarray(image, mode="RGB")
    save = getattr(image, "save", None)
    if save is None:
        raise TypeError(f"unsupported image type {type(image).__name__}")
    buf = io.BytesIO()
    # Fast, lossless and deterministic for a given Pillow: the id stays stable per process.
    save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode(image: ImageLike) -> tuple[bytes, str]:
    """Encoded bytes of ``image`` and their id."""
    data = to_bytes(image)
    return data, image_id(data)

"""Image bytes -> RGB array, with the guards a server needs; content hashing."""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from samserve.core.errors import InvalidInput, ResourceExhausted


def content_hash(data: bytes) -> str:
    """The image id: hex sha256 of the encoded bytes exactly as received."""
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode an encoded image into an (H, W, 3) uint8 RGB array.

    EXIF orientation is applied, so (x, y) prompts refer to the image as a viewer shows it.
    The pixel count is checked from the header before any pixel is decoded (Pillow's own
    guard only errors above ~179 MP).

    Raises:
        InvalidInput: empty, undecodable or truncated data.
        ResourceExhausted: more than ``max_pixels`` pixels.
    """
    if not data:
        raise InvalidInput("image: empty")
    try:
        with warnings.catch_warnings():
            # Our own limit below is stricter; Pillow's warning must not turn into an error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ResourceExhausted(
                    f"image: {width}x{height} is over the limit of {max_pixels} pixels"
                )
            if width < 1 or height < 1:
                raise InvalidInput("image: zero-sized")
            img.load()
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise InvalidInput("image: not a decodable image") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidInput(f"image: could not be decoded ({e})") from e
    return np.asarray(rgb, dtype=np.uint8)

"""Image bytes -> RGB array, with the guards a server needs; content hashing.

Only the formats in :data:`FORMATS` are opened (Pillow would otherwise try every plugin it has,
including ones nobody needs to serve). The size is read from the header and checked before any
pixel is decoded, for every format: our limit, not Pillow's own bomb guard (which errors only
above ~179 MP and then names no limit), decides. :func:`decode_cost` says how much memory one
decode takes, so callers can budget it.
"""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from samserve.core.errors import InvalidInput, ResourceExhausted

#: The accepted formats (Pillow names). GIF, ICO, PSD, ... are refused as undecodable.
FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")

#: Bytes per pixel a decode holds at its peak: the decoded image (up to 4 bands of 16 bits for
#: PNG/TIFF, counted as 8), its EXIF-transposed copy and the RGB result (3 each).
DECODE_BYTES_PER_PIXEL = 8 + 3 + 3


def content_hash(data: bytes) -> str:
    """The image id: hex sha256 of the encoded bytes exactly as received."""
    return hashlib.sha256(data).hexdigest()


def decode_cost(pixels: int) -> int:
    """Peak bytes of decoding an image of ``pixels`` pixels (see DECODE_BYTES_PER_PIXEL)."""
    return pixels * DECODE_BYTES_PER_PIXEL


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header, before any pixel is decoded.

    Raises:
        InvalidInput: empty data, a format outside :data:`FORMATS`, or no readable header.
        ResourceExhausted: over Pillow's own bomb guard (~179 MP).
    """
    with _open(data) as img:
        width, height = img.size
    return int(width), int(height)


def _open(data: bytes) -> Image.Image:
    if not data:
        raise InvalidInput("image: empty")
    try:
        with warnings.catch_warnings():
            # Our own limit is stricter; Pillow's warning must not turn into an error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as e:
        raise ResourceExhausted(f"image: too many pixels ({e})") from e
    except UnidentifiedImageError as e:
        raise InvalidInput(f"image: not a decodable image (accepted: {', '.join(FORMATS)})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidInput(f"image: could not be decoded ({e})") from e


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode an encoded image into an (H, W, 3) uint8 RGB array.

    EXIF orientation is applied, so (x, y) prompts refer to the image as a viewer shows it.
    The pixel count is checked from the header before any pixel is decoded.

    Raises:
        InvalidInput: empty, undecodable or truncated data, or a format not accepted.
        ResourceExhausted: more than ``max_pixels`` pixels.
    """
    img = _open(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = img.size
            if width * height > max_pixels:
                raise ResourceExhausted(
                    f"image: {width}x{height} is over the limit of {max_pixels} pixels"
                )
            if width < 1 or height < 1:
                raise InvalidInput("image: zero-sized")
            img.load()
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except Image.DecompressionBombError as e:
        raise ResourceExhausted(f"image: too many pixels ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InvalidInput(f"image: could not be decoded ({e})") from e
    finally:
        img.close()
    return np.asarray(rgb, dtype=np.uint8)

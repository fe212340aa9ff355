"""Image decoding: EXIF orientation, every mode to RGB, and the guards."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from samserve.core.errors import InvalidInput, ResourceExhausted
from samserve.core.images import content_hash, decode_image

LIMIT = 10_000_000


def _encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied() -> None:
    rgb = np.zeros((20, 40, 3), dtype=np.uint8)
    rgb[:, :20] = 255  # left half white
    img = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    out = decode_image(_encode(img, "JPEG", exif=exif, quality=95), max_pixels=LIMIT)
    assert out.shape == (40, 20, 3)
    assert out[:20].mean() > 200  # the white half is now on top
    assert out[20:].mean() < 50


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK", "1", "LA"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    img = Image.new("RGB", (8, 6), (200, 100, 50))
    img = img.convert(mode) if mode != "I;16" else Image.new("I;16", (8, 6), 1000)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    out = decode_image(_encode(img, fmt), max_pixels=LIMIT)
    assert out.shape == (6, 8, 3)
    assert out.dtype == np.uint8


def test_garbage_and_truncation() -> None:
    with pytest.raises(InvalidInput):
        decode_image(b"nope", max_pixels=LIMIT)
    with pytest.raises(InvalidInput):
        decode_image(b"", max_pixels=LIMIT)
    data = _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    with pytest.raises(InvalidInput):
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = _encode(Image.new("1", (5000, 5000)))
    with pytest.raises(ResourceExhausted, match="pixels"):
        decode_image(data, max_pixels=LIMIT)


def test_content_hash_is_sha256_of_bytes() -> None:
    import hashlib

    assert content_hash(b"abc") == hashlib.sha256(b"abc").hexdigest()

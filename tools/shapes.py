"""Deterministic synthetic images of simple shapes, with ground-truth masks and boxes.

Bright, distinct-coloured filled rectangles, ellipses and triangles on a flat dark background.
The ``tiny`` model's shipped weights were trained on such images (see ``weights/README.md``),
and the demo, the tests and the benchmarks use them as inputs whose right answer is known.

The same ``seed`` always gives the same image and masks (numpy's PCG64 and Pillow's rasteriser,
no global state). Only numpy and Pillow are needed.

Example::

    from tools.shapes import make_shapes_image

    sample = make_shapes_image(seed=3, height=240, width=320)
    sample.image   # (240, 320, 3) uint8 RGB
    sample.masks   # (N, 240, 320) bool, the visible part of each shape
    sample.boxes   # (N, 4) int64 XYXY, tight around each mask
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["KINDS", "ShapesImage", "make_shapes_image", "write_sample_png"]

#: The kinds of shape drawn, in the order ``kinds`` reports them.
KINDS: tuple[str, ...] = ("rectangle", "ellipse", "triangle")

#: Smallest accepted image side, in pixels.
MIN_SIDE = 16

#: A new shape may hide at most this fraction of an already placed shape's visible area...
_MAX_HIDDEN = 0.2
#: ...and at most this fraction of its own area may lie over already placed shapes.
_MAX_OVER = 0.3
#: Placement attempts per shape before it is given up (only in very crowded images).
_TRIES = 100

_Polygon = list[tuple[float, float]]


@dataclass(frozen=True, slots=True)
class ShapesImage:
    """A generated image and its ground truth. All arrays are read-only.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        masks: (N, H, W) bool, one per shape in drawing order (later shapes lie on top). Each is
            the *visible* part of its shape (what later shapes leave uncovered); never empty.
        boxes: (N, 4) int64 XYXY box of each mask, tight and inclusive: ``x1``/``y1`` are the
            last column/row of the mask, as ``segment_anything.utils.amg.batched_mask_to_box``
            computes them (so an AMG ``bbox`` [x, y, w, h] matches ``[x, y, x + w, y + h]``).
        kinds: the kind of each shape, one of :data:`KINDS`.
        colors: (N, 3) uint8 RGB fill colour of each shape.
        background: (3,) uint8 RGB background colour.
    """

    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    kinds: tuple[str, ...]
    colors: np.ndarray
    background: np.ndarray

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return int(self.image.shape[1])

    def __len__(self) -> int:
        """Number of shapes (masks)."""
        return int(self.masks.shape[0])


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


def _colors(rng: np.random.Generator, n: int) -> list[tuple[int, int, int]]:
    """``n`` bright, saturated colours with hues spread evenly around the wheel (shuffled)."""
    offset = rng.random()
    hues = [(offset + i / n + rng.uniform(-0.15, 0.15) / n) for i in range(n)]
    order = rng.permutation(n)
    return [_hsv(hues[int(i)], rng.uniform(0.65, 1.0), rng.uniform(0.85, 1.0)) for i in order]


def _polygon(rng: np.random.Generator, kind: str, size: float) -> _Polygon:
    """Vertices of one shape centred on the origin; ``size`` is its typical extent in pixels."""
    angle = rng.uniform(0.0, math.pi) if rng.random() < 0.6 else 0.0
    if kind == "rectangle":
        hw, hh = size * rng.uniform(0.25, 0.5), size * rng.uniform(0.25, 0.5)
        local = [(-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh)]
    elif kind == "ellipse":
        a, b = size * rng.uniform(0.3, 0.55), size * rng.uniform(0.3, 0.55)
        n = max(24, int(math.pi * (a + b) / 3))  # vertices ~3 px apart: smooth at any size
        t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
        local = list(zip((a * np.cos(t)).tolist(), (b * np.sin(t)).tolist(), strict=True))
    elif kind == "triangle":
        r = size * 0.6
        base = rng.uniform(0.0, 2 * math.pi)
        local = []
        for k in range(3):
            phi = base + k * 2 * math.pi / 3 + rng.uniform(-0.35, 0.35)
            rho = r * rng.uniform(0.75, 1.0)
            local.append((rho * math.cos(phi), rho * math.sin(phi)))
        angle = 0.0  # already at a random orientation
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    c, s = math.cos(angle), math.sin(angle)
    return [(x * c - y * s, x * s + y * c) for x, y in local]


def _rasterise(poly: _Polygon, height: int, width: int) -> tuple[np.ndarray, int, int] | None:
    """Fill ``poly`` (image coordinates); returns (mask of its bounding window, y0, x0)."""
    xs = [p[0] for p in poly]
    ys = [p[1] for p in poly]
    x0, y0 = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
    x1, y1 = min(width, math.ceil(max(xs)) + 1), min(height, math.ceil(max(ys)) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(canvas).polygon([(x - x0, y - y0) for x, y in poly], fill=255)
    window = np.asarray(canvas) > 0
    if not window.any():
        return None
    return window, y0, x0


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def make_shapes_image(
    seed: int,
    height: int = 240,
    width: int = 320,
    n_shapes: int = 4,
    *,
    scale: float = 1.0,
) -> ShapesImage:
    """Generate one image of ``n_shapes`` filled shapes and its ground truth.

    Shapes are sized relative to ``min(height, width)`` (each spans roughly 15-50% of it for up
    to five shapes, smaller when there are more), so an image looks alike at any resolution.
    They may overlap a little (a shape never hides more than 20% of another), and lie fully
    inside the image unless ``scale`` > 1.

    Args:
        seed: any int; the same arguments always give the same result.
        height: image height in pixels (>= 16).
        width: image width in pixels (>= 16).
        n_shapes: number of shapes to draw (>= 1). Only in an image too crowded to place them
            all with little overlap are fewer returned.
        scale: multiplies shape sizes; above 1, shapes may also run off the image edges (as in
            a zoomed-in crop).

    Returns:
        The image, one mask and box per shape, their kinds and colours.

    Raises:
        ValueError: a side below 16 pixels, ``n_shapes`` < 1 or ``scale`` <= 0.
    """
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ValueError(f"image must be at least {MIN_SIDE}x{MIN_SIDE}, got {height}x{width}")
    if n_shapes < 1:
        raise ValueError(f"n_shapes must be >= 1, got {n_shapes}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    rng = np.random.default_rng(np.random.PCG64([abs(int(seed)), int(seed < 0), 0x5A4D]))

    bg_hue, bg_sat, bg_val = rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.03, 0.2)
    background = np.array(_hsv(bg_hue, bg_sat, bg_val), dtype=np.uint8)
    colors = _colors(rng, n_shapes)
    side = min(height, width) * scale * min(1.0, math.sqrt(5.0 / n_shapes))
    bleed = 0.25 if scale > 1 else 0.0  # fraction of a shape allowed off the image

    canvas = _Canvas(np.zeros((height, width), dtype=np.int16))
    kinds: list[str] = []
    placed_colors: list[tuple[int, int, int]] = []
    for color in colors:
        kind = KINDS[int(rng.integers(len(KINDS)))]
        poly = _polygon(rng, kind, side * rng.uniform(0.25, 0.5))
        if canvas.place(rng, poly, bleed):
            kinds.append(kind)
            placed_colors.append(color)

    if not kinds:  # unreachable: the first shape never overlaps anything
        raise RuntimeError(f"could not place any shape (seed={seed}, {height}x{width})")
    return _ground_truth(canvas.covered, kinds, placed_colors, background)


class _Canvas:
    """Which shape is on top at each pixel, and the visible area of each placed shape."""

    def __init__(self, covered: np.ndarray) -> None:
        self.covered = covered  # (H, W) int16: index + 1 of the top shape, 0 = none
        self.areas: list[int] = []

    def place(self, rng: np.random.Generator, poly: _Polygon, bleed: float) -> bool:
        """Try random positions for ``poly`` (centred on the origin) until one overlaps little
        enough; draw it there and return True, or False after :data:`_TRIES` attempts."""
        height, width = self.covered.shape
        xs = [p[0] for p in poly]
        ys = [p[1] for p in poly]
        w_ext, h_ext = max(xs) - min(xs), max(ys) - min(ys)
        lo_x, hi_x = -min(xs) - bleed * w_ext, width - max(xs) + bleed * w_ext
        lo_y, hi_y = -min(ys) - bleed * h_ext, height - max(ys) + bleed * h_ext
        for _ in range(_TRIES):
            cx = rng.uniform(lo_x, hi_x) if hi_x > lo_x else width / 2
            cy = rng.uniform(lo_y, hi_y) if hi_y > lo_y else height / 2
            raster = _rasterise([(x + cx, y + cy) for x, y in poly], height, width)
            if raster is None:
                continue
            window, y0, x0 = raster
            region = self.covered[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]]
            under = region[window]
            if np.count_nonzero(under) > _MAX_OVER * window.sum():
                continue
            hidden = np.bincount(under, minlength=len(self.areas) + 1)[1:].tolist()
            if any(h > _MAX_HIDDEN * a for h, a in zip(hidden, self.areas, strict=True)):
                continue
            self.areas = [a - h for a, h in zip(self.areas, hidden, strict=True)]
            self.areas.append(int(window.sum()))
            region[window] = len(self.areas)
            return True
        return False


def _ground_truth(
    covered: np.ndarray,
    kinds: list[str],
    colors: list[tuple[int, int, int]],
    background: np.ndarray,
) -> ShapesImage:
    """The image, masks and boxes of a finished canvas (arrays made read-only)."""
    ids = np.arange(1, len(kinds) + 1, dtype=np.int16)
    masks = covered[None, :, :] == ids[:, None, None]
    palette = np.array([background.tolist(), *colors], dtype=np.uint8)
    image = np.take(palette, covered, axis=0)
    boxes = np.array([_bbox(m) for m in masks], dtype=np.int64).reshape(-1, 4)
    for a in (image, masks, boxes, palette[1:], background):
        a.setflags(write=False)
    return ShapesImage(
        image=image,
        masks=masks,
        boxes=boxes,
        kinds=tuple(kinds),
        colors=palette[1:],
        background=background,
    )


def write_sample_png(path: str | Path, seed: int, height: int = 240, width: int = 320) -> Path:
    """Write ``make_shapes_image(seed, height, width).image`` as a PNG; returns the path."""
    out = Path(path)
    Image.fromarray(make_shapes_image(seed, height, width).image).save(out)
    return out

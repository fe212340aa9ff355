"""COCO run-length encoding in numpy alone (the page's JSON; no pycocotools needed).

The format is pycocotools' compressed RLE, the one SA-1B uses: run lengths of the mask read in
column-major order, starting with a run of zeros, each length written as 5-bit groups in ASCII
from '0', and from the fourth run on as the difference to the run two before (``rleToString``).
app.js has the same two functions for the browser; tests compare both with pycocotools.
"""

from __future__ import annotations

import numpy as np


def counts_of(mask: np.ndarray) -> list[int]:
    """Run lengths of bool (H, W) ``mask`` in column-major order, zeros first."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def counts_string(counts: list[int]) -> str:
    """pycocotools' compressed form of ``counts`` (``rleToString``)."""
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def parse_counts(text: str) -> list[int]:
    """The run lengths in a compressed counts string (``rleFrString``)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x = k = 0
        more = True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode(mask: np.ndarray) -> dict[str, object]:
    """``{"size": [H, W], "counts": str}`` of bool (H, W) ``mask``."""
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": counts_string(counts_of(mask))}


def decode(rle: dict[str, object]) -> np.ndarray:
    """The bool (H, W) mask of a compressed COCO RLE dict."""
    h, w = (int(v) for v in rle["size"])  # type: ignore[attr-defined]
    counts = parse_counts(str(rle["counts"]))
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"rle: counts cover {flat.size} pixels, size is {h}x{w}")
    return flat.reshape((h, w), order="F")

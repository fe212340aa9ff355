"""The demo behind `make demo`: start the stack, embed a sample, prompt it, draw an overlay.

Uses the `tiny` model with its shipped shape-trained weights: it knows only bright simple
shapes on dark backgrounds (see services/samserve/weights/README.md), which is what the
generated sample shows.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # tools.shapes, and bench/common.py

from common import samserve_up  # noqa: E402

PALETTE = np.array(
    [[255, 64, 64], [64, 200, 255], [255, 220, 0], [120, 255, 120]], dtype=np.float32
)


def overlay(image: np.ndarray, masks: list[np.ndarray], points: list[list[float]]) -> Image.Image:
    """Blend each mask in its own colour over ``image`` and mark the clicked points."""
    out = image.astype(np.float32)
    for i, m in enumerate(masks):
        out[m] = 0.45 * out[m] + 0.55 * PALETTE[i % len(PALETTE)]
    img = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    for x, y in points:
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=(255, 255, 255), width=2)
    return img


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/demo_overlay.png")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from samserve_client import SamClient
    from tools.shapes import make_shapes_image

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sample_path = out.parent / "demo_sample.png"
    sample = make_shapes_image(seed=2024, height=args.height, width=args.width)
    Image.fromarray(sample.image).save(sample_path)
    print(f"sample image: {sample_path} ({args.width}x{args.height}, {len(sample.masks)} shapes)")

    t0 = time.perf_counter()
    with samserve_up("--model", "tiny") as ready:
        print(f"stack up in {time.perf_counter() - t0:.1f} s: {ready}")
        with SamClient(str(ready["embedding"]), str(ready["decoder"])) as client:
            print(f"model: {client.model_info().model_id} ({client.model_info().source})")
            t = time.perf_counter()
            ref = client.embed(sample_path)
            print(
                f"embed (encoder ran: {not ref.cached}): {1000 * (time.perf_counter() - t):.1f} ms"
            )
            t = time.perf_counter()
            print(f"embed again (cached: {client.embed(sample_path).cached}): "
                  f"{1000 * (time.perf_counter() - t):.1f} ms")  # fmt: skip
            masks, points = [], []
            for i, shape_mask in enumerate(sample.masks[:4]):
                ys, xs = np.nonzero(shape_mask)
                point = [float(np.median(xs)), float(np.median(ys))]
                t = time.perf_counter()
                res = client.segment(ref, points=[point], labels=[1])
                ms = 1000 * (time.perf_counter() - t)
                best = int(np.argmax(res.scores))
                gt_iou = (res.masks[best] & shape_mask).sum() / (res.masks[best] | shape_mask).sum()
                print(f"shape {i} ({sample.kinds[i]}): click {point[0]:.0f},{point[1]:.0f} -> "
                      f"score {res.scores[best]:.3f}, IoU with the true shape {gt_iou:.3f}, "
                      f"{ms:.1f} ms")  # fmt: skip
                masks.append(res.masks[best])
                points.append(point)
            box = sample.boxes[0].astype(float)
            t = time.perf_counter()
            res = client.segment(ref, box=box, multimask_output=False)
            print(f"box {box.astype(int).tolist()} -> score {res.scores[0]:.3f}, "
                  f"{1000 * (time.perf_counter() - t):.1f} ms")  # fmt: skip
    overlay(sample.image, masks, points).save(out)
    print(f"overlay written to {out}")


if __name__ == "__main__":
    main()

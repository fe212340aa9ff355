"""CPU time of one SAM 2 / 2.1 image encode per variant: the README model table's last column.

    python bench/bench_sam2_encode.py [--variants sam2.1_hiera_t,...] [--runs 3]
                                      [--height 480 --width 640]

For each variant: the official model with seeded random weights (time does not depend on the
weights), then ``SAM2ImagePredictor.set_image`` on one image ``--runs`` times after a warm-up;
the median, and the parameter count. Every core of the machine, default torch threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", default="sam2.1_hiera_t,sam2.1_hiera_s,sam2.1_hiera_b+,sam2.1_hiera_l"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import torch
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from samserve.core.sam2.models import random_sam2
    from tools.shapes import make_shapes_image

    image = make_shapes_image(seed=1, height=args.height, width=args.width).image
    print(
        f"| variant | parameters | set_image, {args.height}x{args.width}, median of {args.runs} |"
    )
    print("|---|---|---|")
    for variant in args.variants.split(","):
        model = random_sam2(variant, seed=0)
        params = sum(p.numel() for p in model.parameters())
        predictor = SAM2ImagePredictor(model)
        with torch.inference_mode():
            predictor.set_image(image)  # warm-up
            took = []
            for _ in range(args.runs):
                start = time.perf_counter()
                predictor.set_image(image)
                took.append(time.perf_counter() - start)
        print(f"| {variant} | {params / 1e6:.1f} M | {statistics.median(took):.2f} s |", flush=True)
        del predictor, model


if __name__ == "__main__":
    main()

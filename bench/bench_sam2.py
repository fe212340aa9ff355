"""SAM 2.1 on CPU: the served path next to the official SAM2ImagePredictor, same weights.

    python bench/bench_sam2.py [--model sam2.1_hiera_t] [--checkpoint PATH|random]
                               [--rounds 3] [--calls 20] [--height 480 --width 640]

One run prints, side by side:
- ``SAM2ImagePredictor.set_image`` in-process against an uncached ``embed`` through the SDK and
  gRPC (a `samserve up` stack in another process; a distinct image each round, so each call runs
  the encoder and stores the three tensors in Redis);
- ``SAM2ImagePredictor.predict`` (one point, multimask) in-process against a served ``segment``
  with the same point (embedding stored).
Rounds alternate reference and served calls and the table gives medians, as the notes advise
for a shared machine. Defaults: hiera_t with seeded random weights (timing does not depend on
the weights), 480x640.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import percentile_ms, print_table, samserve_up


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam2.1_hiera_t")
    parser.add_argument("--checkpoint", default="random")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import torch
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from samserve.core.models import load_model
    from samserve_client import SamClient
    from tools.shapes import make_shapes_image

    sample = make_shapes_image(seed=5, height=args.height, width=args.width)
    ys, xs = np.nonzero(sample.masks[0])
    point = np.array([[float(np.median(xs)), float(np.median(ys))]])
    label = np.array([1])
    model = load_model(args.model, args.checkpoint)
    predictor = SAM2ImagePredictor(model.sam)
    print(f"model {model.model_id} ({model.source}); image {args.height}x{args.width}; "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip

    def variant(i: int) -> np.ndarray:
        """The sample with one pixel changed: a distinct image id, the same encoder work."""
        image = sample.image.copy()
        image[0, 0, 0] = (int(image[0, 0, 0]) + 1 + i) % 256
        return image

    up_args = ["--model", args.model, "--checkpoint", args.checkpoint, "--cache-ttl", "0"]
    with samserve_up(*up_args) as ready:
        client = SamClient(str(ready["embedding"]), str(ready["decoder"]), timeout=600)
        ref_embed, served_embed = [], []
        for i in range(args.rounds):
            image = variant(i)
            start = time.perf_counter()
            predictor.set_image(image)
            ref_embed.append(time.perf_counter() - start)
            data = png(image)
            start = time.perf_counter()
            ref = client.embed(data)
            served_embed.append(time.perf_counter() - start)
        client.segment(ref, points=point, labels=label)  # load into the decoder's LRU
        predictor.predict(point, label)
        ref_predict, served_predict = [], []
        for _ in range(args.calls):
            start = time.perf_counter()
            predictor.predict(point, label)
            ref_predict.append(time.perf_counter() - start)
            start = time.perf_counter()
            client.segment(ref, points=point, labels=label)
            served_predict.append(time.perf_counter() - start)
        client.close()

    def row(what: str, ref: list[float], ours: list[float]) -> tuple[str, str, str, str]:
        r, o = percentile_ms(ref, 50), percentile_ms(ours, 50)
        return what, f"{r:.0f} ms", f"{o:.0f} ms", f"{o / r:.2f}"

    print_table(
        f"{args.model} on CPU, medians ({args.rounds} encodes, {args.calls} prompts)",
        [
            row("set_image vs uncached embed", ref_embed, served_embed),
            row("predict vs segment (1 point)", ref_predict, served_predict),
        ],
    )


if __name__ == "__main__":
    main()

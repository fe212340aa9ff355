"""Prompt latency through the service vs the official SamPredictor, and cached vs uncached embed.

    python bench/bench_slice.py [--model tiny] [--checkpoint PATH] [--calls 50]

One run prints, side by side: p50/p99 of sequential single-point ``segment`` calls through
the SDK and gRPC (server in another process, embedding already stored) next to the p50 of
``SamPredictor.predict`` in-process on the same image and weights; and the latency of an
uncached ``embed`` next to a cached one. The default model is tiny with its shipped weights.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--width", type=int, default=1800)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import torch
    from segment_anything import SamPredictor

    from samserve.core.models import load_model
    from samserve_client import SamClient
    from tools.shapes import make_shapes_image

    sample = make_shapes_image(seed=5, height=args.height, width=args.width)
    buf = io.BytesIO()
    Image.fromarray(sample.image).save(buf, format="PNG")
    data = buf.getvalue()
    ys, xs = np.nonzero(sample.masks[0])
    point = np.array([[float(np.median(xs)), float(np.median(ys))]])
    label = np.array([1])

    model = load_model(args.model, args.checkpoint)
    print(f"model {model.model_id} ({model.source}); image {args.height}x{args.width}; "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip

    # Reference: the official predictor, in-process.
    predictor = SamPredictor(model.sam)
    predictor.set_image(sample.image)
    for _ in range(3):
        predictor.predict(point, label)
    ref_times = []
    for _ in range(args.calls):
        t = time.perf_counter()
        predictor.predict(point, label)
        ref_times.append(time.perf_counter() - t)

    up_args = ["--model", args.model]
    if args.checkpoint:
        up_args += ["--checkpoint", args.checkpoint]
    with (
        samserve_up(*up_args) as ready,
        SamClient(str(ready["embedding"]), str(ready["decoder"])) as client,
    ):
        t = time.perf_counter()
        ref = client.embed(data)
        uncached = time.perf_counter() - t
        assert not ref.cached
        cached_times = []
        for _ in range(10):
            t = time.perf_counter()
            assert client.embed(data).cached
            cached_times.append(time.perf_counter() - t)
        for _ in range(3):
            client.segment(ref, points=point, labels=label)
        served = []
        for _ in range(args.calls):
            t = time.perf_counter()
            client.segment(ref, points=point, labels=label)
            served.append(time.perf_counter() - t)

    ref_p50 = percentile_ms(ref_times, 50)
    p50, p99 = percentile_ms(served, 50), percentile_ms(served, 99)
    print_table(
        f"segment: {args.calls} sequential single-point calls, multimask, with low-res logits",
        [
            ("p50 ms", f"{ref_p50:.1f}", f"{p50:.1f}", f"{p50 / ref_p50:.2f}"),
            ("p99 ms", f"{percentile_ms(ref_times, 99):.1f}", f"{p99:.1f}",
             f"{p99 / percentile_ms(ref_times, 99):.2f}"),
        ],
    )  # fmt: skip
    cached_p50 = percentile_ms(cached_times, 50)
    print_table(
        "embed: uncached (encoder runs) vs cached (stored embedding), through the SDK",
        [("latency ms", f"{uncached * 1000:.1f}", f"{cached_p50:.1f}",
          f"{cached_p50 / (uncached * 1000):.3f}")],
    )  # fmt: skip
    print("\n(reference = SamPredictor.predict in-process; embed row: reference = uncached)")


if __name__ == "__main__":
    main()

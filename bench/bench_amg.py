"""Segment everything through the service vs the official SamAutomaticMaskGenerator in-process.

    python bench/bench_amg.py [--model tiny] [--checkpoint PATH] [--points-per-side 8]
                              [--crop-n-layers 0] [--height 240] [--width 320]

One run, same image, weights and parameters on both sides. The reference is
``SamAutomaticMaskGenerator(model, ...).generate(rgb)`` (its time includes the image encoder).
The served time is one ``client.segment_everything(image bytes)`` on a fresh stack: hash-first
NOT_FOUND, upload and encode (EmbedCrops with crops), then the decoder's segment everything
and the streamed answer. A second served call (embeddings stored) shows the decoder side alone.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table, samserve_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--crop-n-layers", type=int, default=0)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import torch
    from segment_anything import SamAutomaticMaskGenerator

    from samserve.core.models import load_model
    from samserve_client import SamClient
    from tools.shapes import make_shapes_image

    params = {
        "points_per_side": args.points_per_side,
        "points_per_batch": args.points_per_batch,
        "crop_n_layers": args.crop_n_layers,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
    }
    sample = make_shapes_image(seed=5, height=args.height, width=args.width)
    buf = io.BytesIO()
    Image.fromarray(sample.image).save(buf, format="PNG")
    data = buf.getvalue()
    model = load_model(args.model, args.checkpoint)
    print(f"model {model.model_id} ({model.source}); image {args.height}x{args.width}; "
          f"params {params}; torch threads {torch.get_num_threads()}")  # fmt: skip

    t = time.perf_counter()
    try:
        ref = SamAutomaticMaskGenerator(model.sam, **params).generate(sample.image)
        ref_n = str(len(ref))
    except IndexError:  # the official code on crops without any mask
        ref_n = "IndexError"
    ref_s = time.perf_counter() - t

    up_args = ["--model", args.model]
    if args.checkpoint:
        up_args += ["--checkpoint", args.checkpoint]
    with (
        samserve_up(*up_args) as ready,
        SamClient(str(ready["embedding"]), str(ready["decoder"]), timeout=3600) as client,
    ):
        t = time.perf_counter()
        served = client.segment_everything(data, **params)
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        client.segment_everything(data, **params)
        warm_s = time.perf_counter() - t

    print_table(
        "segment everything, one image, one run (wall seconds)",
        [
            ("masks", ref_n, str(len(served)), "-"),
            ("cold s (encode + decode)", f"{ref_s:.2f}", f"{cold_s:.2f}", f"{cold_s / ref_s:.2f}"),
            ("warm s (stored embedding)", f"{ref_s:.2f}", f"{warm_s:.2f}", f"{warm_s / ref_s:.2f}"),
        ],
    )
    print("\n(reference = SamAutomaticMaskGenerator.generate in-process, encoder included)")


if __name__ == "__main__":
    main()

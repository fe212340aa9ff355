"""Decoder cost: served Segment and segment everything vs the official code, decode-only.

    python bench/bench_decoder.py [--model tiny] [--checkpoint PATH] [--runs 3]
        [--sizes 1200x1800,480x640] [--calls 20] [--rounds 4] [--callers 1,2,4,8]
        [--amg-size 480x640] [--points-per-side 8] [--pred-iou-thresh ...] [--no-amg]
        [--decoder-workers N] [--decoder-threads N] [--decoder-runtime auto|onnxruntime|torch]

Single point, multimask, low-res logits on, the shipped tiny by default. Each run prints, side
by side (reference | samserve | ratio):

- per image size, the p50 and p99 of served ``Segment`` calls through the SDK (server in another
  process, embedding stored) next to in-process ``SamPredictor.predict`` (default torch threads),
  in alternating rounds of ``--calls`` calls each so both sides see the same machine load;
- prompts per second with 1, 2, 4 and 8 concurrent SDK callers (one client each) next to the
  sequential in-process ``predict`` rate;
- segment everything, warm (embedding stored, decoder only) next to the official
  ``SamAutomaticMaskGenerator.generate`` given the same image's embedding (``set_image`` done
  once and not repeated inside ``generate``): both sides decode only.

With ``--runs N`` every figure is the median of N runs. The decoder's own options (folding, ONNX
Runtime, torch.compile, threads) are measured by ``bench/bench_decoder_options.py``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import percentile_ms, print_table, samserve_up


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


class Case:
    """One image: its bytes, one point on a shape, and a predictor with the image set."""

    def __init__(self, sam: Any, height: int, width: int) -> None:
        from segment_anything import SamPredictor

        from tools.shapes import make_shapes_image

        sample = make_shapes_image(seed=5, height=height, width=width)
        self.size = (height, width)
        self.image = sample.image
        self.data = _png(sample.image)
        ys, xs = np.nonzero(sample.masks[0])
        self.point = np.array([[float(np.median(xs)), float(np.median(ys))]])
        self.label = np.array([1])
        self.predictor = SamPredictor(sam)
        self.predictor.set_image(sample.image)

    def predict(self) -> None:
        self.predictor.predict(self.point, self.label, multimask_output=True)


def _timed(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def latency(case: Case, client: Any, ref: Any, calls: int, rounds: int) -> dict[str, float]:
    """Alternating rounds of in-process predict and served Segment (seconds lists -> ms)."""

    def served() -> None:
        client.segment(ref, points=case.point, labels=case.label, multimask_output=True,
                       return_low_res_logits=True)  # fmt: skip

    for _ in range(3):
        case.predict()
        served()
    ref_t: list[float] = []
    ours_t: list[float] = []
    for _ in range(rounds):
        ref_t += _timed(case.predict, calls)
        ours_t += _timed(served, calls)
    return {
        "ref_p50": percentile_ms(ref_t, 50),
        "ref_p99": percentile_ms(ref_t, 99),
        "p50": percentile_ms(ours_t, 50),
        "p99": percentile_ms(ours_t, 99),
        "ref_rate": 1000.0 / float(np.mean(np.asarray(ref_t) * 1000.0)),
    }


def throughput(case: Case, clients: list[Any], refs: list[Any], calls: int) -> float:
    """Prompts per second with one thread per client, each making ``calls`` calls."""
    barrier = threading.Barrier(len(clients) + 1)

    def caller(client: Any, ref: Any) -> None:
        barrier.wait()
        for _ in range(calls):
            client.segment(ref, points=case.point, labels=case.label, multimask_output=True,
                           return_low_res_logits=True)  # fmt: skip

    threads = [threading.Thread(target=caller, args=cr) for cr in zip(clients, refs, strict=True)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return len(clients) * calls / (time.perf_counter() - start)


def official_everything(sam: Any, image: np.ndarray, params: dict[str, Any]) -> tuple[float, int]:
    """Seconds and mask count of the official generator, decode only: the predictor's image is
    set once, and ``generate`` neither sets nor resets it (crop_n_layers=0: one whole-image
    crop, the same image)."""
    from segment_anything import SamAutomaticMaskGenerator

    gen = SamAutomaticMaskGenerator(sam, **params)
    gen.predictor.set_image(image)
    gen.predictor.set_image = lambda *a, **k: None  # type: ignore[method-assign]
    gen.predictor.reset_image = lambda: None  # type: ignore[method-assign]
    t = time.perf_counter()
    masks = gen.generate(image)
    return time.perf_counter() - t, len(masks)


def one_run(args: argparse.Namespace, model: Any, up_args: list[str]) -> dict[str, float]:
    from samserve_client import SamClient

    sam = model.sam
    out: dict[str, float] = {}
    cases = [Case(sam, *_size(s)) for s in args.sizes.split(",")]
    callers = [int(c) for c in args.callers.split(",")]
    params = {
        "points_per_side": args.points_per_side,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
        "box_nms_thresh": args.box_nms_thresh,
    }
    with samserve_up(*up_args) as ready:
        addr = (str(ready["embedding"]), str(ready["decoder"]))
        clients = [SamClient(*addr, timeout=3600) for _ in range(max(callers))]
        try:
            for case in cases:
                name = f"{case.size[0]}x{case.size[1]}"
                ref = clients[0].embed(case.data)
                for k, v in latency(case, clients[0], ref, args.calls, args.rounds).items():
                    out[f"{name}:{k}"] = v
                if case is cases[0]:
                    refs = [c.embed(case.data) for c in clients]
                    for n in callers:
                        throughput(case, clients[:n], refs[:n], 2)  # warm every connection
                        out[f"rate:{n}"] = throughput(
                            case, clients[:n], refs[:n], max(2, args.calls // n)
                        )
                    out["rate:ref"] = out[f"{name}:ref_rate"]
            if not args.no_amg:
                amg_case = Case(sam, *_size(args.amg_size))
                ref_s, ref_n = official_everything(sam, amg_case.image, params)
                ref = clients[0].embed(amg_case.data)
                clients[0].segment_everything(ref, **params)  # load the LRU
                t = time.perf_counter()
                served = clients[0].segment_everything(ref, **params)
                out["amg:ref_s"], out["amg:ref_n"] = ref_s, float(ref_n)
                out["amg:s"], out["amg:n"] = time.perf_counter() - t, float(len(served))
        finally:
            for c in clients:
                c.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--sizes", default="1200x1800,480x640")
    parser.add_argument("--calls", type=int, default=20, help="calls per round and side")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--callers", default="1,2,4,8")
    parser.add_argument("--no-amg", action="store_true")
    parser.add_argument("--amg-size", default="480x640")
    parser.add_argument("--points-per-side", type=int, default=8)
    # The shipped tiny's IoU head predicts low values (docs/shipped-weights notes): thresholds
    # that suit it, so the comparison measures masks, not an empty answer.
    parser.add_argument("--pred-iou-thresh", type=float, default=0.1)
    parser.add_argument("--stability-score-thresh", type=float, default=0.5)
    parser.add_argument("--box-nms-thresh", type=float, default=0.9)
    parser.add_argument("--decoder-workers", type=int, default=None)
    parser.add_argument("--decoder-threads", type=int, default=None)
    parser.add_argument("--decoder-runtime", default=None, help="auto, onnxruntime or torch")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import torch

    from samserve.core.cpus import available_cpus
    from samserve.core.models import load_model

    model = load_model(args.model, args.checkpoint)
    # Queue every caller rather than refuse (the service's default refuses waits over 0.3 s).
    up_args = ["--model", args.model, "--max-queued-prompts", "64", "--max-queue-seconds", "600"]
    if args.checkpoint:
        up_args += ["--checkpoint", args.checkpoint]
    if args.decoder_workers is not None:
        up_args += ["--decoder-workers", str(args.decoder_workers)]
    if args.decoder_threads is not None:
        up_args += ["--decoder-threads", str(args.decoder_threads)]
    if args.decoder_runtime is not None:
        up_args += ["--decoder-runtime", args.decoder_runtime]
    load = " ".join(f"{x:.1f}" for x in __import__("os").getloadavg())
    print(f"model {model.model_id} ({model.source}); reference torch threads "
          f"{torch.get_num_threads()}; CPUs (cgroup) {available_cpus()}; load average {load}; "
          f"samserve up {' '.join(up_args)}")  # fmt: skip
    runs = [one_run(args, model, up_args) for _ in range(args.runs)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    of = f" (median of {args.runs} runs)" if args.runs > 1 else ""

    for size in args.sizes.split(","):
        print_table(
            f"segment {size}: single point, multimask, logits; {args.rounds} alternating rounds "
            f"of {args.calls} calls{of}",
            [
                ("p50 ms", f"{med[size + ':ref_p50']:.1f}", f"{med[size + ':p50']:.1f}",
                 f"{med[size + ':p50'] / med[size + ':ref_p50']:.2f}"),
                ("p99 ms", f"{med[size + ':ref_p99']:.1f}", f"{med[size + ':p99']:.1f}",
                 f"{med[size + ':p99'] / med[size + ':ref_p99']:.2f}"),
            ],
        )  # fmt: skip
    first = args.sizes.split(",")[0]
    print_table(
        f"throughput {first}: prompts/s, N concurrent SDK callers vs sequential predict{of}",
        [
            (f"{n} callers", f"{med['rate:ref']:.1f}", f"{med[f'rate:{n}']:.1f}",
             f"{med[f'rate:{n}'] / med['rate:ref']:.2f}")
            for n in (int(c) for c in args.callers.split(","))
        ],
    )  # fmt: skip
    if not args.no_amg:
        print_table(
            f"segment everything {args.amg_size}, {args.points_per_side}x{args.points_per_side} "
            f"grid, pred_iou_thresh {args.pred_iou_thresh}, stability_score_thresh "
            f"{args.stability_score_thresh}, box_nms_thresh {args.box_nms_thresh}: decode only"
            f"{of}",
            [
                ("masks", f"{med['amg:ref_n']:.0f}", f"{med['amg:n']:.0f}", "-"),
                ("warm s", f"{med['amg:ref_s']:.2f}", f"{med['amg:s']:.2f}",
                 f"{med['amg:s'] / med['amg:ref_s']:.2f}"),
            ],
        )  # fmt: skip
    rate = max(med[f"rate:{n}"] for n in (int(c) for c in args.callers.split(",")))
    print(f"\ncost: {1e6 / rate / 3600:.1f} pod-hours per million prompts at the best measured "
          f"rate ({rate:.1f} prompts/s on this machine)")  # fmt: skip
    print("(reference = in-process SamPredictor.predict / SamAutomaticMaskGenerator.generate "
          "with the image already set)")  # fmt: skip


if __name__ == "__main__":
    main()

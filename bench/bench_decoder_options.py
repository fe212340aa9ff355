"""The decoder's speed options, one prompt in process: what each gives, kept or dropped.

    python bench/bench_decoder_options.py [--model tiny] [--checkpoint PATH] [--calls 20]
        [--threads 1,2] [--only NAME,...]

Run ``torch.compile``, ``onednn`` and ``onnx`` each with ``--only`` in a process of its own: after
one of them, torch's dispatcher state can make the next fail (seen with torch 2.14).

One point (plus the official padding point), multimask, on a stored embedding of a 1200x1800
shapes image. Each option times the prompt encoder and mask decoder (``decode`` rows), or the
whole ``predict`` with upsampling to 1200x1800 and bit-packing (``predict`` rows), median of
``--calls``, at each intra-op thread count; the reference is the official
``MaskDecoder.forward`` (what ``SamPredictor.predict`` runs). Every option's masks are compared
with the reference's at 1200x1800 (worst IoU over the three masks, largest score difference):
the parity contract is IoU >= 0.995 and scores within 1e-3.

Options: the per-image prefix as it was (``prefix``); folded attention and channels-last
upscaling (``folded``, the default now); ``channels_last`` memory format for the official
upscaling; ``torch.compile`` of the folded decoder; oneDNN graph fusion (TorchScript, frozen);
ONNX Runtime fp32 (``core/decoder_runtime.OrtDecoder``: what the decoder service runs) and
dynamic int8 of the same graph (cached prefix fed as inputs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: F401 - puts the repository root on sys.path (tools.shapes)

HEIGHT, WIDTH = 1200, 1800


def median_ms(fn: Callable[[], Any], calls: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000.0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--only", default="prefix,folded,channels_last")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import torch
    from segment_anything import SamPredictor

    from samserve.core.decoder import MaskEncoding, PromptSpec, encode_prediction, predict
    from samserve.core.models import load_model
    from samserve.core.prefix import ImagePrefix, decode, prepare
    from tools.shapes import make_shapes_image

    sam = load_model(args.model, args.checkpoint).sam
    sample = make_shapes_image(seed=5, height=HEIGHT, width=WIDTH)
    ys, xs = np.nonzero(sample.masks[0])
    point = np.array([[float(np.median(xs)), float(np.median(ys))]])
    label = np.array([1])
    predictor = SamPredictor(sam)
    predictor.set_image(sample.image)
    feats = predictor.features
    size, input_size = predictor.original_size, predictor.input_size
    with torch.inference_mode():
        pe = sam.prompt_encoder.get_dense_pe()
        ready = prepare(sam, pe, feats[0].numpy(), size, input_size)
        coords = predictor.transform.apply_coords(point, size)
        pts = (torch.as_tensor(coords, dtype=torch.float)[None], torch.as_tensor(label)[None])
        sparse, dense = sam.prompt_encoder(points=pts, boxes=None, masks=None)

    def official() -> tuple[Any, Any]:
        return sam.mask_decoder(
            image_embeddings=feats,
            image_pe=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )

    options: dict[str, Callable[[], tuple[Any, Any]]] = {
        "official": official,
        "prefix": lambda: decode(sam, ready.prefix, sparse, True, fold=False),
        "folded": lambda: decode(sam, ready.prefix, sparse, True),
    }
    notes: dict[str, str] = {}

    def channels_last() -> tuple[Any, Any]:
        up = sam.mask_decoder.output_upscaling
        up.to(memory_format=torch.channels_last)
        try:
            return decode(sam, ready.prefix, sparse, True, fold=False)
        finally:
            up.to(memory_format=torch.contiguous_format)

    options["channels_last"] = channels_last

    class Folded(torch.nn.Module):
        """The folded decoder with the cached prefix as inputs (for export and compile)."""

        def __init__(self) -> None:
            super().__init__()
            self.sam = sam

        def forward(self, sparse: Any, keys: Any, key_pe: Any, t2i_k: Any, t2i_v: Any,
                    i2t_q: Any) -> tuple[Any, Any]:  # fmt: skip
            prefix = ImagePrefix(keys, key_pe, t2i_k, t2i_v, i2t_q, ready.prefix.size)
            return decode(self.sam, prefix, sparse, True)

    p = ready.prefix
    inputs = (sparse, p.keys, p.key_pe, p.t2i_k, p.t2i_v, p.i2t_q)
    wanted = set(args.only.split(",")) if args.only else None

    if wanted is None or "compile" in wanted:
        try:
            t = time.perf_counter()
            compiled = torch.compile(Folded().eval())
            with torch.inference_mode():
                compiled(*inputs)
            notes["compile"] = f"first call (compile) {time.perf_counter() - t:.0f} s"
            options["compile"] = lambda: compiled(*inputs)
        except Exception as e:
            notes["compile"] = f"failed: {type(e).__name__}: {str(e)[:80]}"

    if wanted is None or "onednn" in wanted:
        try:
            torch.jit.enable_onednn_fusion(True)
            with torch.no_grad():
                traced = torch.jit.freeze(torch.jit.trace(Folded().eval(), inputs))
                for _ in range(3):
                    traced(*inputs)
            options["onednn"] = lambda: traced(*inputs)
        except Exception as e:
            notes["onednn"] = f"failed: {type(e).__name__}: {str(e)[:80]}"

    if wanted is None or "onnx" in wanted:
        try:
            import onnxruntime as ort
            from onnxruntime.quantization import QuantType, quantize_dynamic

            from samserve.core.decoder_runtime import OrtDecoder

            served = OrtDecoder(sam, "bench")  # what the decoder service runs
            options["onnx"] = lambda: served(ready.prefix, sparse, True)
            tmp = Path(tempfile.mkdtemp())
            (tmp / "d.onnx").write_bytes(served.graph.graph)
            quantize_dynamic(tmp / "d.onnx", tmp / "d8.onnx", weight_type=QuantType.QUInt8)
            names = ["sparse", "keys", "key_pe", "t2i_k", "t2i_v", "i2t_q"]
            p = ready.prefix
            feeds = {
                n: x.numpy()
                for n, x in zip(names, (sparse, p.keys, p.key_pe, p.t2i_k, p.t2i_v, p.i2t_q),
                                strict=True)
            }  # fmt: skip
            sessions: dict[int, Any] = {}

            def int8() -> tuple[Any, Any]:
                n = torch.get_num_threads()
                if n not in sessions:
                    so = ort.SessionOptions()
                    so.intra_op_num_threads = n
                    so.inter_op_num_threads = 1
                    sessions[n] = ort.InferenceSession(str(tmp / "d8.onnx"), so)
                m, s = sessions[n].run(None, feeds)
                return torch.from_numpy(m[:, 1:]), torch.from_numpy(s[:, 1:])

            options["onnx_int8"] = int8
        except Exception as e:
            notes["onnx"] = f"failed: {type(e).__name__}: {str(e)[:80]}"

    with torch.inference_mode():
        ref_low, ref_iou = official()
        ref_masks = sam.postprocess_masks(ref_low, input_size, size)[0] > sam.mask_threshold
    threads = [int(n) for n in args.threads.split(",")]
    rows = []
    base: dict[int, float] = {}
    for name, fn in options.items():
        if (
            wanted is not None
            and name != "official"
            and not any(name.startswith(w) for w in wanted)
        ):
            continue
        with torch.inference_mode():
            low, scores = fn()
            masks = sam.postprocess_masks(low, input_size, size)[0] > sam.mask_threshold
        worst = min(iou(masks[k].numpy(), ref_masks[k].numpy()) for k in range(len(masks)))
        diff = float((scores - ref_iou).abs().max())
        times = []
        for n in threads:
            torch.set_num_threads(n)
            with torch.inference_mode():
                ms = median_ms(fn, args.calls)
            base.setdefault(n, ms)
            times.append(f"{ms:.1f} ({ms / base[n]:.2f})")
        rows.append((f"decode {name}", *times, f"{worst:.4f}", f"{diff:.1e}", notes.get(name, "")))

    prompt = PromptSpec(points=point, labels=label)
    full = {
        "predict official": lambda: predictor.predict(point, label, multimask_output=True),
        "predict samserve (torch)": lambda: encode_prediction(
            predict(sam, pe, ready, prompt, True), MaskEncoding.BITMASK, True
        ),
    }
    if "onnx" in options:
        full["predict samserve (onnxruntime)"] = lambda: encode_prediction(
            predict(sam, pe, ready, prompt, True, runtime=served), MaskEncoding.BITMASK, True
        )
    for name, fn in full.items():
        times = []
        for n in threads:
            torch.set_num_threads(n)
            ms = median_ms(fn, args.calls)
            times.append(f"{ms:.1f}")
        rows.append((name, *times, "-", "-", ""))

    from samserve.cli.table import table_lines

    header = (
        "option", *[f"ms at {n} thread(s) (x official)" for n in threads],
        "worst IoU", "max |score diff|", "note",
    )  # fmt: skip
    print(f"decoder options, {args.model}, one point, multimask, {HEIGHT}x{WIDTH}; median of "
          f"{args.calls} calls")  # fmt: skip
    print(*table_lines(rows, header), sep="\n")
    for k, v in notes.items():
        if k not in options:
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()

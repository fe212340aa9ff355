"""Encoder throughput: the embedding service on Triton vs the official SamPredictor.set_image.

    python bench/bench_encoder.py [--model tiny] [--checkpoint PATH] [--device cpu|cuda]
                                  [--images 8] [--concurrency 1 8] [--height 480 --width 640]

One run prints, side by side: images/s of uncached ``embed`` calls through the SDK (distinct
images, so every call runs the encoder) against the embedding service whose encoder is a
private tritonserver, at each concurrency, next to images/s of a plain loop of
``SamPredictor.set_image`` in-process on the same weights; plus the mean batch Triton formed.
Defaults: tiny (shipped weights when present) on CPU. For vit_h on a GPU:
``--model vit_h --checkpoint sam_vit_h_4b8939.pth --device cuda`` (Triton runs bfloat16 there,
the reference runs the official float32 path).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import sys
import threading
import time
import urllib.request
import warnings
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import percentile_ms, print_table

T = TypeVar("T")


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def triton_counters(metrics_url: str, model_name: str) -> tuple[int, int]:
    """(inferences, executions) so far: their ratio is the mean batch size."""
    with urllib.request.urlopen(metrics_url, timeout=5) as r:
        text = r.read().decode()
    found = []
    for name in ("nv_inference_count", "nv_inference_exec_count"):
        m = re.search(rf'^{name}\{{model="{model_name}",version="1"\}} (\d+)', text, re.M)
        found.append(int(m.group(1)) if m else 0)
    return found[0], found[1]


class ServiceThread:
    """The embedding service on its own event loop, so the SDK's loop stays separate."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 600.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def embed_all(address: str, images: list[bytes], concurrency: int) -> list[float]:
    """Embed every image with ``concurrency`` calls in flight; returns each call's seconds."""
    from samserve_client import AsyncSamClient

    pending = list(images)
    latencies: list[float] = []

    async def worker(client: AsyncSamClient) -> None:
        while pending:
            data = pending.pop()
            t = time.perf_counter()
            ref = await client.embed(data, timeout=600)
            latencies.append(time.perf_counter() - t)
            assert not ref.cached, "a benchmark image was already stored"

    # The decoder is never called; the SDK only needs an address for it.
    async with AsyncSamClient(address, address) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default=None, help="Triton's dtype (default: per device)")
    parser.add_argument("--images", type=int, default=8, help="images per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import torch
    from segment_anything import SamPredictor

    from samserve.compose import start_embedding
    from samserve.config import Limits, ServerSettings, StoreSettings
    from samserve.core.models import load_model
    from samserve.core.triton_encoder import TritonEncoder
    from samserve.procs.redis import RedisProcess
    from samserve.procs.triton import TritonModelOptions, TritonProcess
    from samserve.rpc.server import drain
    from tools.shapes import make_shapes_image

    model = load_model(args.model, args.checkpoint)
    n_sets = 1 + len(args.concurrency)  # the reference, then one fresh set per concurrency
    images = [
        make_shapes_image(seed=1000 + i, height=args.height, width=args.width).image
        for i in range(args.images * n_sets + 1)
    ]
    print(
        f"model {model.model_id} ({model.source}); device {args.device}; "
        f"image {args.height}x{args.width}; {args.images} images per row; "
        f"torch threads {torch.get_num_threads()}"
    )

    # Reference: the official predictor in a loop, one image after another.
    sam = model.sam.to(args.device)
    predictor = SamPredictor(sam)
    predictor.set_image(images[-1])  # warm-up
    ref_times = []
    for rgb in images[: args.images]:
        t = time.perf_counter()
        predictor.set_image(rgb)
        if args.device == "cuda":
            torch.cuda.synchronize()
        ref_times.append(time.perf_counter() - t)
    ref_ips = len(ref_times) / sum(ref_times)
    sam.to("cpu")
    predictor.reset_image()
    if args.device == "cuda":
        torch.cuda.empty_cache()

    triton = TritonProcess.start(
        TritonModelOptions(args.model, args.checkpoint, device=args.device, dtype=args.dtype)
    )
    redis = RedisProcess.start()
    services = ServiceThread()
    encoder = TritonEncoder(triton.grpc_address, triton.model_name, timeout=600)
    rows: list[tuple[str, str, str, str]] = []
    try:
        service = services.call(
            start_embedding(
                model,
                StoreSettings(redis_url=redis.url, ttl_seconds=0),
                Limits(),
                ServerSettings(port=0, metrics_port=0, grace=5),
                encoder=encoder,
            )
        )
        asyncio.run(embed_all(service.address, [png(images[-1])], 1))  # warm-up
        for k, concurrency in enumerate(args.concurrency, start=1):
            batch = [png(rgb) for rgb in images[k * args.images : (k + 1) * args.images]]
            before = triton_counters(triton.metrics_url, triton.model_name)
            t = time.perf_counter()
            latencies = asyncio.run(embed_all(service.address, batch, concurrency))
            wall = time.perf_counter() - t
            after = triton_counters(triton.metrics_url, triton.model_name)
            ips = len(batch) / wall
            execs = max(after[1] - before[1], 1)
            rows.append(
                (
                    f"images/s, concurrency {concurrency} (mean batch "
                    f"{(after[0] - before[0]) / execs:.1f})",
                    f"{ref_ips:.2f}",
                    f"{ips:.2f}",
                    f"{ips / ref_ips:.2f}",
                )
            )
            rows.append(
                (
                    f"p50 latency ms, concurrency {concurrency}",
                    f"{percentile_ms(ref_times, 50):.0f}",
                    f"{percentile_ms(latencies, 50):.0f}",
                    f"{percentile_ms(latencies, 50) / percentile_ms(ref_times, 50):.2f}",
                )
            )
        services.call(drain([service], 5))
    finally:
        services.close()
        triton.stop()
        redis.stop()

    print_table(
        "encoder: uncached embed through the SDK, embedding service on Triton "
        f"({args.device}), vs SamPredictor.set_image",
        rows,
    )
    print(
        "\n(reference = SamPredictor.set_image in a loop, in-process, float32; "
        "samserve = SDK -> embedding service -> Triton, PNG decode and Redis store included)"
    )


if __name__ == "__main__":
    main()

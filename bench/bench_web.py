"""Click-to-mask in the browser, both decode modes, next to the paper's ~50 ms; GetEmbedding's
latency and bytes; the int8 decoder's IoU against fp32.

    python bench/bench_web.py [--clicks 20] [--height 1200] [--width 1800] [--threads N]

One run starts ``samserve up`` (shipped tiny), ``samserve export-onnx --quantize`` and
``samserve web``, all as the commands a user runs, then drives the page in headless Chromium
(Debian's, through playwright). Each measured click is one foreground point on a shape, timed by
the page itself (``performance.now()`` from the pointer release to the overlay drawn,
``window.samserve.last.ms``); a Reset follows each click, so every prompt is a single point.
Three clicks per mode warm up first. The paper's figure is for its in-browser decoder on a
laptop; tiny's decoder is SAM's (the same for every SAM 1 variant), so the per-click cost is the
one vit_h's users would see on this machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import percentile_ms, print_table, samserve_up

PAPER_MS = 50.0


@contextmanager
def samserve_web(*args: str) -> Iterator[str]:
    """Run `samserve web ARGS` in a child process; yield the page's URL; stop it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "samserve", "web", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        assert proc.stdout is not None
        yield str(json.loads(proc.stdout.readline())["web"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


def click_latencies(
    url: str, mode: str, image: Path, points: list[tuple[float, float]], size: tuple[int, int]
) -> tuple[list[float], list[float]]:
    """Milliseconds from click to overlay drawn, one per point, as the page measured them; and
    those of the decoder's run alone (in-browser mode only)."""
    from tests.browser.chromium import launch

    h, w = size
    out, runs = [], []
    with launch() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_function("window.samserve.mode !== null")
        if page.evaluate("window.samserve.mode") != mode or page.evaluate("window.samserve.error"):
            raise RuntimeError(f"{mode}: {page.evaluate('window.samserve.error')}")
        page.set_input_files("#file", str(image))
        page.wait_for_function("window.samserve.ready", timeout=120_000)
        seq = 0
        for i, (x, y) in enumerate(points):
            box = page.locator("#image").bounding_box()
            page.mouse.click(
                box["x"] + (x + 0.5) * box["width"] / w, box["y"] + (y + 0.5) * box["height"] / h
            )
            seq += 1
            page.wait_for_function(f"window.samserve.seq >= {seq}", timeout=120_000)
            if i >= 3:  # the first three warm up
                last = page.evaluate("window.samserve.last")
                out.append(float(last["ms"]))
                if last.get("run_ms") is not None:
                    runs.append(float(last["run_ms"]))
            page.click("#reset")
            seq += 1
            page.wait_for_function(f"window.samserve.seq >= {seq}", timeout=120_000)
    return out, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--width", type=int, default=1800)
    parser.add_argument("--images", type=int, default=5, help="images for GetEmbedding")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime-web threads")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from samserve_client import SamClient
    from samserve_client._channel import sync_channel
    from samserve_client._embedding import get_embedding, get_embedding_request
    from samserve_client.pb import embedding_pb2_grpc
    from tools.shapes import make_shapes_image

    sample = make_shapes_image(seed=5, height=args.height, width=args.width)
    rng = np.random.default_rng(0)
    points = []
    for i in range(args.clicks + 3):
        ys, xs = np.nonzero(sample.masks[i % len(sample.masks)])
        k = int(rng.integers(len(xs)))
        points.append((float(xs[k]), float(ys[k])))

    with tempfile.TemporaryDirectory() as tmp, samserve_up() as ready:
        onnx_dir = Path(tmp) / "onnx"
        export = subprocess.run(
            [sys.executable, "-m", "samserve", "export-onnx", "--out", str(onnx_dir),
             "--quantize"],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
        exported = json.loads(export.stdout.splitlines()[-1])
        sizes = {p.name: p.stat().st_size / 2**20 for p in onnx_dir.glob("*.onnx")}
        image = Path(tmp) / "shapes.png"
        Image.fromarray(sample.image).save(image)

        # GetEmbedding: sequential calls on stored embeddings of a few images.
        embedding, decoder = str(ready["embedding"]), str(ready["decoder"])
        stub = embedding_pb2_grpc.EmbeddingServiceStub(sync_channel(embedding))
        fetch_s, wire_bytes, tensor_bytes = [], [], []
        with SamClient(embedding, decoder) as client:
            for seed in range(args.images):
                rgb = make_shapes_image(seed=100 + seed, height=480, width=640).image
                buf = io.BytesIO()
                Image.fromarray(rgb).save(buf, format="PNG")
                ref = client.embed(buf.getvalue())
                get_embedding(stub, ref.image_id)
                for _ in range(10):
                    t = time.perf_counter()
                    tensors = get_embedding(stub, ref.image_id)
                    fetch_s.append(time.perf_counter() - t)
                tensor_bytes.append(tensors.nbytes)
                raw = stub.GetEmbedding(get_embedding_request(ref.image_id), timeout=30)
                wire_bytes.append(raw.ByteSize())

        threads = f"&threads={args.threads}" if args.threads else ""
        web_args = ["--embedding", embedding, "--decoder", decoder, "--onnx-dir", str(onnx_dir)]
        with samserve_web(*web_args) as url:
            browser_ms, run_ms = click_latencies(
                f"{url}?decode=browser{threads}", "browser", image, points,
                (args.height, args.width),
            )  # fmt: skip
            server_ms, _ = click_latencies(
                f"{url}?decode=server", "server", image, points, (args.height, args.width)
            )

    int8 = exported["int8_iou_vs_fp32"]
    print(
        f"model {exported['model_id']}; image {args.height}x{args.width}; {len(browser_ms)} "
        f"measured clicks per mode; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    rows = []
    for name, ms in (
        ("browser (onnxruntime-web)", browser_ms),
        ("server (/api/segment)", server_ms),
    ):
        p50, p90 = percentile_ms(np.array(ms) / 1000, 50), percentile_ms(np.array(ms) / 1000, 90)
        rows.append((f"{name} p50 ms", f"{PAPER_MS:.0f}", f"{p50:.1f}", f"{p50 / PAPER_MS:.1f}"))
        rows.append((f"{name} p90 ms", f"{PAPER_MS:.0f}", f"{p90:.1f}", f"{p90 / PAPER_MS:.1f}"))
    run50 = percentile_ms(np.array(run_ms) / 1000, 50)
    rows.append(("browser: decoder run alone p50 ms", f"{PAPER_MS:.0f}", f"{run50:.1f}",
                 f"{run50 / PAPER_MS:.1f}"))  # fmt: skip
    print_table("click to mask drawn, in headless Chromium (reference: the paper's ~50 ms)", rows)
    print_table(
        f"GetEmbedding: {len(fetch_s)} sequential calls over {args.images} stored images",
        [
            ("p50 ms", "-", f"{percentile_ms(fetch_s, 50):.2f}", "-"),
            ("p99 ms", "-", f"{percentile_ms(fetch_s, 99):.2f}", "-"),
            ("tensor bytes per image", "-", f"{int(np.mean(tensor_bytes)):,}", "-"),
            ("message bytes per image", "-", f"{int(np.mean(wire_bytes)):,}", "-"),
        ],
    )
    print_table(
        "int8 decoder (decoder.quant.onnx) against fp32, measured by export-onnx",
        [  # reference = the fp32 decoder
            ("mask IoU mean", "1.0", f"{int8['mean']:.4f}", f"{int8['mean']:.4f}"),
            ("mask IoU min", "1.0", f"{int8['min']:.4f}", f"{int8['min']:.4f}"),
            (
                "file MiB",
                f"{sizes['decoder.onnx']:.1f}",
                f"{sizes['decoder.quant.onnx']:.1f}",
                f"{sizes['decoder.quant.onnx'] / sizes['decoder.onnx']:.2f}",
            ),
        ],
    )


if __name__ == "__main__":
    main()

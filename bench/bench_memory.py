"""Peak memory of heavy calls on a 24 MP photo, the stack held to a pod-like memory limit.

    python bench/bench_memory.py [--limit-gib 3] [--reference-limit-gib 20] [--skip-reference]

Runs as root (cgroup v1 memory controller under /sys/fs/cgroup/memory). `samserve up` (both
services and its private Redis) runs in a cgroup limited to ``--limit-gib``; each scenario's
peak is the cgroup's ``memory.max_usage_in_bytes``, reset before the scenario, and an OOM kill
is read from ``memory.oom_control``. The official ``SamAutomaticMaskGenerator`` runs in its own
cgroup with a larger limit, on the same image and weights, for comparison.

Scenarios (tiny with its shipped weights, a 6000x4000 JPEG of shapes):
- SegmentEverything with default parameters (32x32), and with 8x8;
- SegmentEverything 8x8 with both thresholds at 0 (every mask goes to full resolution);
- Segment with 64 boxes, multimask, logits on (its answer is ~590 MB packed);
- at 1200x1800, SegmentEverything 64x64 with both thresholds at 0 (``--grid64``, slow).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import samserve_up

CGROUPS = Path("/sys/fs/cgroup/memory")
GIB = 1 << 30


class Cgroup:
    """A cgroup-v1 memory group with a limit; processes join it before they exec."""

    def __init__(self, name: str, limit: int) -> None:
        self.path = CGROUPS / name
        self.path.mkdir(exist_ok=True)
        (self.path / "memory.limit_in_bytes").write_text(str(limit))

    def wrap(self) -> list[str]:
        """A command prefix: the command after it runs inside this group."""
        join = f'echo $$ > {self.path / "cgroup.procs"} && exec "$@"'
        return ["sh", "-c", join, "sh"]

    def reset_peak(self) -> None:
        (self.path / "memory.max_usage_in_bytes").write_text("0")

    def peak(self) -> int:
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    def oom_kills(self) -> int:
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def photo(height: int, width: int) -> bytes:
    """A JPEG of bright shapes, as a phone would send it (quality 90)."""
    from tools.shapes import make_shapes_image

    buf = io.BytesIO()
    Image.fromarray(make_shapes_image(seed=7, height=height, width=width).image).save(
        buf, format="JPEG", quality=90
    )
    return buf.getvalue()


def measure(group: Cgroup, what: str, run: Callable[[], str]) -> tuple[str, str, str]:
    """(scenario, peak MiB or OOM, outcome)."""
    group.reset_peak()
    kills = group.oom_kills()
    start = time.perf_counter()
    try:
        outcome = run()
    except Exception as e:
        outcome = f"{type(e).__name__}: {str(e)[:80]}"
    seconds = time.perf_counter() - start
    peak = f"{group.peak() / 2**20:,.0f} MiB"
    if group.oom_kills() > kills:
        peak += " (OOM-killed)"
    print(f"  {what}: {peak}, {outcome}, {seconds:.1f} s", flush=True)
    return what, peak, f"{outcome}, {seconds:.1f} s"


def _scenarios(client: Any, grid64: bool) -> list[tuple[str, Callable[[], str]]]:
    from samserve_client import Prompt, SamServeError

    big = client.embed(photo(4000, 6000))
    zero = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}

    def everything(ref: Any, **params: object) -> Callable[[], str]:
        return lambda: f"{len(client.segment_everything(ref, **params))} masks"

    def boxes() -> str:
        prompts = [Prompt(box=[100 * i, 50, 100 * i + 900, 2000]) for i in range(64)]
        try:
            return f"{len(client.segment_prompts(big, prompts))} results"
        except SamServeError as e:
            return f"{e.code.name} ({e.details[:60]}...)"

    out = [
        ("24 MP: SegmentEverything, defaults (32x32)", everything(big)),
        ("24 MP: SegmentEverything 8x8", everything(big, points_per_side=8)),
        ("24 MP: SegmentEverything 8x8, thresholds 0", everything(big, points_per_side=8, **zero)),
        ("24 MP: Segment, 64 multimask boxes + logits", boxes),
    ]
    if grid64:
        mid = client.embed(photo(1200, 1800))
        out.append(
            ("1200x1800: SegmentEverything 64x64, thresholds 0",
             everything(mid, points_per_side=64, **zero))
        )  # fmt: skip
    return out


def served(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    from samserve_client import SamClient

    group = Cgroup(f"samserve_bench_{os.getpid()}", int(args.limit_gib * GIB))
    try:
        with (
            samserve_up("--model", "tiny", wrap=group.wrap()) as ready,
            SamClient(str(ready["embedding"]), str(ready["decoder"]), timeout=3600) as client,
        ):
            return [measure(group, w, run) for w, run in _scenarios(client, args.grid64)]
    finally:
        group.remove()


def reference(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """The official generator on the same photo and weights, in a process of its own."""
    group = Cgroup(f"samserve_bench_ref_{os.getpid()}", int(args.reference_limit_gib * GIB))
    rows = []
    try:
        for grid in (8, 32):
            group.reset_peak()
            kills = group.oom_kills()
            start = time.perf_counter()
            result = subprocess.run(
                [*group.wrap(), sys.executable, __file__, "--run-reference", str(grid)],
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - start
            peak = f"{group.peak() / 2**20:,.0f} MiB"
            if group.oom_kills() > kills or result.returncode < 0:
                peak += " (OOM-killed)"
            outcome = (
                result.stdout.strip().splitlines()[-1]
                if result.stdout.strip()
                else (f"exit {result.returncode}")
            )
            what = f"24 MP: official generator, {grid}x{grid}"
            print(f"  {what}: {peak}, {outcome}, {seconds:.1f} s", flush=True)
            rows.append((what, peak, f"{outcome}, {seconds:.1f} s"))
    finally:
        group.remove()
    return rows


def run_reference(grid: int) -> None:
    import warnings

    warnings.simplefilter("ignore")
    from segment_anything import SamAutomaticMaskGenerator

    from samserve.core.images import decode_image
    from samserve.core.models import load_model

    image = decode_image(photo(4000, 6000), max_pixels=50_000_000)
    sam = load_model("tiny").sam
    masks = SamAutomaticMaskGenerator(sam, points_per_side=grid).generate(image)
    print(f"{len(masks)} masks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-gib", type=float, default=3.0)
    parser.add_argument("--reference-limit-gib", type=float, default=20.0)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--grid64", action="store_true")
    parser.add_argument("--run-reference", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_reference:
        run_reference(args.run_reference)
        return
    if os.geteuid() != 0 or not CGROUPS.is_dir():
        sys.exit("bench_memory needs root and the cgroup-v1 memory controller")
    print(f"samserve up held to {args.limit_gib:g} GiB:")
    rows = served(args)
    if not args.skip_reference:
        print(f"official generator held to {args.reference_limit_gib:g} GiB:")
        rows += reference(args)
    from samserve.cli.table import table_lines

    print("\nPeak memory (cgroup max_usage_in_bytes)")
    print("\n".join(table_lines(rows, ("scenario", "peak", "outcome"))))
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()

"""``samserve export DIR --out OUT``: segment everything in every image of a folder, SA-1B style.

One JSON per image, ``OUT/<image file stem>.json``::

    {"image": {"image_id": <sha256>, "file_name": ..., "width": W, "height": H},
     "annotations": [{"id": i, "segmentation": {"size": [H, W], "counts": <COCO RLE>},
                      "bbox": [x, y, w, h], "area": ..., "predicted_iou": ...,
                      "point_coords": [[x, y]], "stability_score": ..., "crop_box": [x, y, w, h]}]}

Each file is written to a temporary name and renamed, so a killed run never leaves a partial
JSON, and a rerun skips images whose JSON exists (resume). Unreadable images are reported and
skipped. Progress goes to stderr, one JSON summary line to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from samserve_client import AsyncSamClient, SamServeError, image_id

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
#: The segment_everything parameters the command exposes as flags (name, type).
AMG_FLAGS: tuple[tuple[str, type], ...] = (
    ("points_per_side", int),
    ("points_per_batch", int),
    ("pred_iou_thresh", float),
    ("stability_score_thresh", float),
    ("stability_score_offset", float),
    ("box_nms_thresh", float),
    ("crop_n_layers", int),
    ("crop_nms_thresh", float),
    ("crop_overlap_ratio", float),
    ("crop_n_points_downscale_factor", int),
    ("min_mask_region_area", int),
)


@dataclass
class Summary:
    """What a run did: counts, failures (file, reason) and wall time."""

    total: int = 0
    exported: int = 0
    skipped: int = 0
    masks: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "total": self.total,
                "exported": self.exported,
                "skipped": self.skipped,
                "failed": [{"file": f, "error": e} for f, e in self.failed],
                "masks": self.masks,
                "seconds": round(self.seconds, 3),
            }
        )


def add_cli_args(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """The ``export`` subcommand's flags."""
    parser.add_argument("dir", type=Path, help="folder of images (not recursive)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON files")
    parser.add_argument(
        "--embedding", default=env.get("SAMSERVE_EMBEDDING_ADDRESS", "127.0.0.1:50051")
    )
    parser.add_argument("--decoder", default=env.get("SAMSERVE_DECODER_ADDRESS", "127.0.0.1:50052"))
    parser.add_argument("--model", default="", help="model variant to ask for")
    parser.add_argument("--concurrency", type=int, default=2, help="images in flight at once")
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline per call, s")
    for name, kind in AMG_FLAGS:
        parser.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=None, dest=name,
            help="SamAutomaticMaskGenerator parameter (default: the official default)",
        )  # fmt: skip


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _image_size(data: bytes) -> tuple[int, int]:
    """(width, height) after EXIF orientation; raises on an unreadable image."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        oriented = ImageOps.exif_transpose(im)
        return oriented.size


def sa1b_record(
    path: Path, data: bytes, size: tuple[int, int], anns: list[dict[str, Any]]
) -> dict[str, Any]:
    """The SA-1B-style JSON document of one image."""
    width, height = size
    return {
        "image": {
            "image_id": image_id(data),
            "file_name": path.name,
            "width": width,
            "height": height,
        },
        "annotations": [{"id": i, **a} for i, a in enumerate(anns)],
    }


def _write_atomic(target: Path, doc: dict[str, Any]) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, target)


class _Progress:
    """A one-line progress bar on a terminal stream."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.done = 0

    def advance(self, summary: Summary) -> None:
        self.done += 1
        width = 30
        filled = width * self.done // max(self.total, 1)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"exported {summary.exported} skipped {summary.skipped} failed {len(summary.failed)}"
        )
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


async def export_folder(
    client: AsyncSamClient,
    folder: Path,
    out: Path,
    params: dict[str, Any],
    *,
    concurrency: int = 2,
    progress: TextIO | None = None,
) -> Summary:
    """Export every image of ``folder`` not yet in ``out``; see the module docstring."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    files = image_files(folder)
    summary = Summary(total=len(files))
    bar = _Progress(len(files), progress) if progress is not None else None
    gate = asyncio.Semaphore(concurrency)
    start = time.perf_counter()

    async def one(path: Path) -> None:
        target = out / f"{path.stem}.json"
        try:
            if target.exists():
                summary.skipped += 1
                return
            async with gate:
                try:
                    data = await asyncio.to_thread(path.read_bytes)
                    size = await asyncio.to_thread(_image_size, data)
                except Exception as e:  # PIL raises many kinds for a bad file
                    summary.failed.append((path.name, f"unreadable image: {e}"))
                    return
                try:
                    anns = await client.segment_everything(data, **params, output_mode="coco_rle")
                except SamServeError as e:
                    summary.failed.append((path.name, f"{e.code.name}: {e}"))
                    return
                await asyncio.to_thread(_write_atomic, target, sa1b_record(path, data, size, anns))
                summary.exported += 1
                summary.masks += len(anns)
        finally:
            if bar is not None:
                bar.advance(summary)

    await asyncio.gather(*(one(p) for p in files))
    summary.failed.sort()
    summary.seconds = time.perf_counter() - start
    return summary


def run_export(ns: argparse.Namespace) -> int:
    """Run ``samserve export``; exit code 0 when every image was exported or skipped, 1 when
    some failed, 2 for a bad folder."""
    if not ns.dir.is_dir():
        print(f"samserve export: {ns.dir} is not a folder", file=sys.stderr)
        return 2
    params = {name: getattr(ns, name) for name, _ in AMG_FLAGS if getattr(ns, name) is not None}

    async def go() -> Summary:
        async with AsyncSamClient(
            ns.embedding, ns.decoder, model=ns.model, timeout=ns.timeout
        ) as client:
            return await export_folder(
                client, ns.dir, ns.out, params, concurrency=ns.concurrency, progress=sys.stderr
            )

    summary = asyncio.run(go())
    for name, error in summary.failed:
        print(f"samserve export: skipped {name}: {error}", file=sys.stderr)
    print(summary.to_json(), flush=True)
    return 1 if summary.failed else 0

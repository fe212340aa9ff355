"""``samserve export DIR --out OUT``: segment everything in every image of a folder, SA-1B style.

One JSON per image, ``OUT/<image file name>.json``: ``a.jpg`` gives ``a.jpg.json``, so two
images that differ only in their extension never share an output::

    {"image": {"image_id": <sha256>, "file_name": ..., "width": W, "height": H},
     "annotations": [{"id": i, "segmentation": {"size": [H, W], "counts": <COCO RLE>},
                      "bbox": [x, y, w, h], "area": ..., "predicted_iou": ...,
                      "point_coords": [[x, y]], "stability_score": ..., "crop_box": [x, y, w, h]}]}

Each file is written atomically (:func:`samserve_client._files.atomic_write`: a temporary file
of its own, fsynced, renamed), so a killed run never leaves a partial JSON and concurrent runs
into one folder never share a temporary file. A rerun skips an image whose JSON is complete and
describes the same bytes (same sha256); an empty, partial or stale one is redone (resume).
Symlinks are not followed and files over ``--max-image-bytes`` are not read: like unreadable
images, they are reported and skipped. A progress bar (tqdm, the ``cli`` extra) goes to stderr
when it is a terminal; one JSON summary line goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import io
import json
import os
import stat
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from samserve_client import AsyncSamClient, SamServeError, image_id
from samserve_client._convert import EVERYTHING_PARAMETERS
from samserve_client._files import atomic_write
from samserve_client.cli import _connect

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
#: The server's default byte limit of one image.
DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024

_FLAG_TYPES: dict[int, type] = {
    FieldDescriptor.CPPTYPE_INT32: int,
    FieldDescriptor.CPPTYPE_INT64: int,
    FieldDescriptor.CPPTYPE_UINT32: int,
    FieldDescriptor.CPPTYPE_UINT64: int,
    FieldDescriptor.CPPTYPE_DOUBLE: float,
    FieldDescriptor.CPPTYPE_FLOAT: float,
    FieldDescriptor.CPPTYPE_STRING: str,
}


def generator_flags() -> dict[str, FieldDescriptor]:
    """The generator parameters export takes as flags: segment_everything's, from the proto,
    except output_mode (export always writes COCO RLE)."""
    return {name: f for name, f in EVERYTHING_PARAMETERS.items() if name != "output_mode"}


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
    """The ``export`` command's flags."""
    parser.add_argument("dir", type=Path, help="folder of images (not recursive)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON files")
    parser.add_argument("--concurrency", type=int, default=2, help="images in flight at once")
    _connect.env_option(
        parser, "--max-image-bytes", "SAMSERVE_MAX_IMAGE_BYTES", env,
        # A string default goes through type=int, so a bad env value is a usage error.
        str(DEFAULT_MAX_IMAGE_BYTES), type=int, help="skip (and report) larger files",
    )  # fmt: skip
    _connect.add_cli_args(parser, env, timeout=600.0)
    g = parser.add_argument_group(
        "automatic mask generator", "unset parameters take the server's defaults"
    )
    for name, f in generator_flags().items():
        flag = "--" + name.replace("_", "-")
        if f.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, dest=name)
        elif f.cpp_type in _FLAG_TYPES:
            g.add_argument(flag, type=_FLAG_TYPES[f.cpp_type], default=None, dest=name)


def output_name(path: Path) -> str:
    """The JSON file name of an image: its whole file name plus ``.json``."""
    return f"{path.name}.json"


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (symlinks too, to be reported), sorted by name."""
    with os.scandir(folder) as entries:
        return sorted(
            Path(e.path)
            for e in entries
            if Path(e.name).suffix.lower() in IMAGE_SUFFIXES
            and (e.is_symlink() or e.is_file(follow_symlinks=False))
        )


class Refused(Exception):
    """An input export will not read; the message says why."""


def read_image(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file that is not a symlink and holds at most ``max_bytes``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Refused("a symlink (not followed)") from None
        raise Refused(f"unreadable: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise Refused("not a regular file")
        data = f.read(max_bytes + 1)
    if st.st_size > max_bytes or len(data) > max_bytes:
        raise Refused(f"{max(st.st_size, len(data))} bytes, over --max-image-bytes {max_bytes}")
    return data


def is_done(target: Path, file_name: str, key: str) -> bool:
    """Whether ``target`` is a complete export of the image ``key`` named ``file_name``."""
    try:
        doc = json.loads(target.read_bytes())
    except (OSError, ValueError):
        return False
    image = doc.get("image") if isinstance(doc, dict) else None
    return (
        isinstance(image, dict)
        and image.get("image_id") == key
        and image.get("file_name") == file_name
        and isinstance(doc.get("annotations"), list)
    )


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


def _progress_bar(total: int) -> Any:
    """A tqdm bar on stderr when it is a terminal and tqdm is installed (log files get none)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="image", file=sys.stderr)


async def export_folder(
    client: AsyncSamClient,
    folder: Path,
    out: Path,
    params: dict[str, Any],
    *,
    concurrency: int = 2,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    progress: bool = False,
) -> Summary:
    """Export every image of ``folder`` not yet done in ``out``; see the module docstring."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    files = image_files(folder)
    summary = Summary(total=len(files))
    bar = _progress_bar(len(files)) if progress else None
    gate = asyncio.Semaphore(concurrency)
    start = time.perf_counter()

    async def export_one(path: Path) -> None:
        if path.is_symlink():
            raise Refused("a symlink (not followed)")
        data = await asyncio.to_thread(read_image, path, max_image_bytes)
        target = out / output_name(path)
        if await asyncio.to_thread(is_done, target, path.name, image_id(data)):
            summary.skipped += 1
            return
        try:
            size = await asyncio.to_thread(_image_size, data)
        except Exception as e:  # PIL raises many kinds for a bad file
            raise Refused(f"unreadable image: {e}") from None
        try:
            anns = await client.segment_everything(data, **params, output_mode="coco_rle")
        except SamServeError as e:
            raise Refused(f"{e.code.name}: {e}") from None
        doc = json.dumps(sa1b_record(path, data, size, anns), separators=(",", ":"))
        await asyncio.to_thread(atomic_write, target, doc.encode())
        summary.exported += 1
        summary.masks += len(anns)

    async def one(path: Path) -> None:
        try:
            async with gate:
                await export_one(path)
        except Refused as e:
            summary.failed.append((path.name, str(e)))
        finally:
            if bar is not None:
                bar.set_postfix(
                    exported=summary.exported,
                    skipped=summary.skipped,
                    failed=len(summary.failed),
                    refresh=False,
                )
                bar.update(1)

    try:
        await asyncio.gather(*(one(p) for p in files))
    finally:
        if bar is not None:
            bar.close()
    summary.failed.sort()
    summary.seconds = time.perf_counter() - start
    return summary


def run(ns: argparse.Namespace) -> int:
    """Run ``samserve export``: exit code 0 when every image was exported or skipped, 1 when
    some failed, 2 for a bad folder or flag."""
    if not ns.dir.is_dir():
        raise _connect.UsageError(f"{ns.dir} is not a folder")
    if ns.concurrency < 1:
        raise _connect.UsageError("--concurrency must be at least 1")
    if ns.max_image_bytes < 1:
        raise _connect.UsageError("--max-image-bytes must be at least 1")
    params = {name: getattr(ns, name) for name in generator_flags()}
    params = {name: value for name, value in params.items() if value is not None}

    async def go() -> Summary:
        async with _connect.open_client(AsyncSamClient, ns) as client:
            return await export_folder(
                client,
                ns.dir,
                ns.out,
                params,
                concurrency=ns.concurrency,
                max_image_bytes=ns.max_image_bytes,
                progress=True,
            )

    summary = asyncio.run(go())
    for name, error in summary.failed:
        print(f"samserve export: skipped {name}: {error}", file=sys.stderr)
    print(summary.to_json(), flush=True)
    return 1 if summary.failed else 0

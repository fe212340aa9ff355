"""``samserve segment IMAGE --point X,Y[,LABEL] ... [--box X0,Y0,X1,Y1] [--out FILE]``: one
prompt query, the mask(s) to a file, a JSON summary (scores, best, areas, out) on stdout."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping

import numpy as np

from samserve_client import SamClient, SamServeError
from samserve_client.cli import _connect


def add_cli_args(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """The ``segment`` command's flags."""
    parser.add_argument("image", help="image file")
    parser.add_argument(
        "--point", action="append", default=[], metavar="X,Y[,LABEL]",
        help="point prompt in pixels; LABEL 1 = foreground (default), 0 = background",
    )  # fmt: skip
    parser.add_argument("--box", metavar="X0,Y0,X1,Y1")
    parser.add_argument("--single-mask", action="store_true", help="one mask instead of three")
    parser.add_argument("--out", help="write masks: .npz (all masks + scores) or .png (best mask)")
    _connect.add_cli_args(parser, env, timeout=60.0)


def _floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise SystemExit(f"samserve segment: {what} {text!r} is not numbers") from None
    if len(values) not in n:
        raise SystemExit(
            f"samserve segment: {what} {text!r} needs {' or '.join(map(str, n))} values"
        )
    return values


def run(ns: argparse.Namespace) -> int:
    """Run the query; returns the process exit code (1: the server refused it)."""
    points, labels = [], []
    for text in ns.point:
        v = _floats(text, (2, 3), "--point")
        points.append(v[:2])
        labels.append(int(v[2]) if len(v) == 3 else 1)
    box = _floats(ns.box, (4,), "--box") if ns.box else None
    if not points and box is None:
        raise SystemExit("samserve segment: give at least one --point or a --box")
    with _connect.open_client(SamClient, ns) as client:
        try:
            res = client.segment(
                ns.image,
                points=points or None,
                labels=labels or None,
                box=box,
                multimask_output=not ns.single_mask,
            )
        except SamServeError as e:
            print(f"samserve segment: {e}", file=sys.stderr)
            return 1
    best = int(np.argmax(res.scores))
    if ns.out:
        if ns.out.endswith(".npz"):
            np.savez_compressed(ns.out, masks=res.masks, scores=res.scores)
        else:
            from PIL import Image

            Image.fromarray(res.masks[best].astype(np.uint8) * 255).save(ns.out)
    summary = {
        "scores": [round(float(s), 4) for s in res.scores],
        "best": best,
        "areas": [int(m.sum()) for m in res.masks],
        "out": ns.out,
    }
    print(json.dumps(summary))
    return 0

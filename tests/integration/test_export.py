"""``samserve export`` (the SDK's command) against real services: 20 images (one corrupt),
killed part-way, resumed: each good image exported exactly once, the corrupt one reported; two
runs at once into one folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tests.conftest import png_bytes
from tests.stack import StackThread
from tools.shapes import make_shapes_image

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_IMAGES = 20
FLAGS = [
    "--points-per-side", "2", "--points-per-batch", "4", "--pred-iou-thresh", "0",
    "--stability-score-thresh", "0", "--concurrency", "1",
]  # fmt: skip


def _cmd(stack: StackThread, src: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "samserve_client", "export", str(src), "--out", str(out),
        "--embedding", stack.embedding_address, "--decoder", stack.decoder_address, *FLAGS,
    ]  # fmt: skip


def test_export_kill_and_resume(stack: StackThread, tmp_path: Path) -> None:
    src, out = tmp_path / "images", tmp_path / "out"
    src.mkdir()
    for i in range(N_IMAGES - 1):
        rgb = make_shapes_image(seed=100 + i, height=48, width=64).image
        (src / f"img{i:02d}.png").write_bytes(png_bytes(rgb))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        _cmd(stack, src, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if out.is_dir() and len(list(out.glob("*.json"))) >= 3:
            break
        time.sleep(0.05)
    assert first.poll() is None, "the first run finished before it could be killed"
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    done_before = {p.name for p in out.glob("*.json")}
    assert 3 <= len(done_before) < N_IMAGES - 1

    second = subprocess.run(
        _cmd(stack, src, out), capture_output=True, text=True, env=env, timeout=600
    )
    assert second.returncode == 1, second.stderr  # 1: some image failed (the corrupt one)
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["total"] == N_IMAGES
    assert summary["skipped"] == len(done_before)
    assert summary["exported"] + summary["skipped"] == N_IMAGES - 1
    assert [f["file"] for f in summary["failed"]] == ["broken.png"]
    assert "broken.png" in second.stderr
    assert "\r" not in second.stderr  # stderr is not a terminal: no progress bar

    files = sorted(p.name for p in out.glob("*.json"))
    assert files == [f"img{i:02d}.png.json" for i in range(N_IMAGES - 1)]
    for name in files:
        doc = json.loads((out / name).read_text())
        assert doc["image"]["file_name"] == name.removesuffix(".json")
        assert (doc["image"]["width"], doc["image"]["height"]) == (64, 48)
        for ann in doc["annotations"]:
            m = mask_utils.decode(ann["segmentation"])
            assert m.shape == (48, 64)
            assert int(np.asarray(m).sum()) == ann["area"]
            assert set(ann) >= {"bbox", "predicted_iou", "point_coords", "stability_score"}
            assert len(ann["crop_box"]) == 4


def test_concurrent_runs_into_one_folder(stack: StackThread, tmp_path: Path) -> None:
    src, out = tmp_path / "images", tmp_path / "out"
    src.mkdir()
    for i in range(4):
        rgb = make_shapes_image(seed=200 + i, height=48, width=64).image
        (src / f"img{i}.png").write_bytes(png_bytes(rgb))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    runs = [
        subprocess.Popen(
            _cmd(stack, src, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (stdout, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr.decode()
        summary = json.loads(stdout.decode().strip().splitlines()[-1])
        assert summary["exported"] + summary["skipped"] == 4
    assert sorted(p.name for p in out.iterdir()) == [f"img{i}.png.json" for i in range(4)]
    for p in out.iterdir():
        assert json.loads(p.read_text())["image"]["file_name"] == p.name.removesuffix(".json")

"""SAM 2 on a real tritonserver (CPU, sam2_tiny, random weights): the three outputs equal the
local encoder's, and Embed via Triton stores entries whose Segment answers equal the official
``SAM2ImagePredictor`` (what the local encoder's entries answer, tests/parity/test_sam2_*).

The server is the binary from the nvidia-pytriton wheel, started by ``TritonProcess`` against a
per-run copy of ``triton_models/`` (the ``sam_image_encoder_sam2_tiny`` model).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

if importlib.util.find_spec("tritonclient") is None or importlib.util.find_spec("sam2") is None:
    pytest.skip("needs tritonclient and sam2 (samserve[triton,sam2])", allow_module_level=True)

from google.protobuf import text_format
from sam2.sam2_image_predictor import SAM2ImagePredictor
from tritonclient.grpc import model_config_pb2 as mc

from samserve.compose import start_embedding
from samserve.core.models import LoadedModel, load_model
from samserve.core.sam2.encoder import encode_sam2
from samserve.core.triton_encoder import Sam2TritonEncoder, triton_model_name
from samserve.procs.triton import (
    TritonModelOptions,
    TritonProcess,
    find_tritonserver,
    write_model_repository,
)
from tests.conftest import png_bytes
from tests.stack import StackThread
from tools.shapes import make_shapes_image

if find_tritonserver() is None:
    pytest.skip("no tritonserver binary (the nvidia-pytriton wheel)", allow_module_level=True)

pytestmark = [pytest.mark.triton, pytest.mark.integration, pytest.mark.timeout(300)]

MIN_IOU = 0.995
MIN_IOU_SMALL = 0.97  # masks under 2,000 px (fp16 storage flips edge pixels), as in parity
SMALL_PX = 2000
MAX_SCORE_DIFF = 1e-3
# Batched float32 on CPU against one image in-process: only summation order differs.
EMBED_ATOL = 1e-4
VARIANT = "sam2_tiny"


class Sam2TritonStack(StackThread):
    """The services of ``tests/stack.py`` with the embedding service encoding on Triton."""

    def __init__(self, model: LoadedModel, redis_url: str, triton: TritonProcess) -> None:
        super().__init__(model, redis_url, store_dtype="float16")
        self.encoder = Sam2TritonEncoder(triton.grpc_address, triton.model_name, timeout=120)

    def start(self) -> Sam2TritonStack:
        super().start()
        return self

    def start_embedding(self) -> None:
        server = self.server
        self.embedding = self.call(
            start_embedding(self.model, self.store, self.limits, server, encoder=self.encoder)
        )


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model(VARIANT, "random", seed=0)


@pytest.fixture(scope="module")
def triton() -> Iterator[TritonProcess]:
    options = TritonModelOptions(VARIANT, "random", device="cpu", parameters={"warmup": "false"})
    process = TritonProcess.start(options)
    yield process
    process.stop()


SHIPPED = ["sam2_tiny", "sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l"]


@pytest.mark.parametrize("variant", SHIPPED)
def test_repository_configs(variant: str, tmp_path: Path) -> None:
    """Every shipped SAM 2 config parses, names its variant, has the three outputs and the
    SAM 1 models' queue policy, and runs samserve.triton_model_sam2."""
    name = write_model_repository(TritonModelOptions(variant, device="cpu"), tmp_path)
    config = text_format.Parse((tmp_path / name / "config.pbtxt").read_text(), mc.ModelConfig())
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert config.name == name == triton_model_name(variant)
    assert (params["variant"], params["device"], params["dtype"]) == (variant, "cpu", "float32")
    assert [(i.name, list(i.dims)) for i in config.input] == [("IMAGE", [3, 1024, 1024])]
    assert [(o.name, list(o.dims)) for o in config.output] == [
        ("IMAGE_EMBED", [256, 64, 64]),
        ("HIGH_RES_0", [32, 256, 256]),
        ("HIGH_RES_1", [64, 128, 128]),
        ("MODEL_ID", [1]),
    ]
    policy = config.dynamic_batching.default_queue_policy
    assert policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert policy.max_queue_size == 32 and policy.allow_timeout_override
    shim = (tmp_path / name / "1" / "model.py").read_text()
    assert "from samserve.triton_model_sam2 import TritonPythonModel" in shim


async def test_outputs_equal_local_encoder(model: LoadedModel, triton: TritonProcess) -> None:
    """Triton's three tensors == the local encoder's, for a landscape and a portrait image sent
    together (so they may share a batch)."""
    images = [
        make_shapes_image(seed=3, height=120, width=160).image,
        make_shapes_image(seed=4, height=150, width=100).image,
    ]
    encoder = Sam2TritonEncoder(triton.grpc_address, triton.model_name, timeout=120)
    try:
        assert await encoder.ready()
        got = await asyncio.gather(*(encoder.encode(im) for im in images))
    finally:
        await encoder.close()
    for image, features in zip(images, got, strict=True):
        want = encode_sam2(model.sam, image.copy())
        assert [f.shape for f in features] == [(256, 64, 64), (32, 256, 256), (64, 128, 128)]
        for g, w in zip(features, want, strict=True):
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, w, rtol=0, atol=EMBED_ATOL)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _answers(stack: StackThread, image: np.ndarray, prompts: list[dict]) -> list:
    """Embed ``image`` through ``stack`` (a miss), then Segment each prompt."""
    with stack.client(timeout=120) as client:
        ref = client.embed(png_bytes(image))
        assert not ref.cached
        return [client.segment(ref, multimask_output=True, **kwargs) for kwargs in prompts]


def _assert_same(got, masks: np.ndarray, scores: np.ndarray, what: str) -> None:
    assert got.masks.shape == masks.shape
    for k in range(len(masks)):
        bound = MIN_IOU if masks[k].sum() >= SMALL_PX else MIN_IOU_SMALL
        assert _iou(got.masks[k], masks[k]) >= bound, f"mask {k} of {what}"
        assert abs(float(got.scores[k]) - float(scores[k])) <= MAX_SCORE_DIFF, f"score {k}"


def test_segment_parity_through_services(
    model: LoadedModel, triton: TritonProcess, redis_url: str
) -> None:
    """Embed on Triton (stored in fp16), Segment in the decoder == the same with the local
    encoder's entry, and == SAM2ImagePredictor.predict."""
    sample = make_shapes_image(seed=7, height=120, width=160)
    ys, xs = np.nonzero(sample.masks[0])
    point = np.array([[float(np.median(xs)), float(np.median(ys))]])
    prompts = [{"points": point, "labels": np.array([1])}, {"box": sample.boxes[1].astype(float)}]
    stack = Sam2TritonStack(model, redis_url, triton).start()
    try:
        via_triton = _answers(stack, sample.image, prompts)
    finally:
        stack.close()
    redis.Redis.from_url(redis_url).flushall()  # the local encoder's entry must be its own
    local_stack = StackThread(model, redis_url, store_dtype="float16").start()
    try:
        via_local = _answers(local_stack, sample.image, prompts)
    finally:
        local_stack.close()
    predictor = SAM2ImagePredictor(model.sam)
    predictor.set_image(sample.image.copy())
    for kwargs, got, local in zip(prompts, via_triton, via_local, strict=True):
        _assert_same(got, local.masks, local.scores, f"{kwargs} (local encoder)")
        masks, scores, _ = predictor.predict(
            point_coords=kwargs.get("points"),
            point_labels=kwargs.get("labels"),
            box=kwargs.get("box"),
            multimask_output=True,
        )
        _assert_same(got, masks, scores, f"{kwargs} (SAM2ImagePredictor)")


@pytest.mark.slow
def test_up_serves_a_sam2_model_on_its_private_triton(tmp_path: Path) -> None:
    """`samserve up --model sam2_tiny --encoder triton`: no refusal, the private Triton serves
    sam_image_encoder_sam2_tiny, and Embed + Segment work through it."""
    import json
    import os
    import subprocess
    import sys

    from samserve_client import SamClient

    sample = make_shapes_image(seed=5, height=96, width=128)
    args = [sys.executable, "-m", "samserve", "up", "--model", VARIANT, "--checkpoint", "random",
            "--encoder", "triton"]  # fmt: skip
    log = tmp_path / "up.log"
    with log.open("w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, log.read_text()[-3000:]
        ready = json.loads(line)
        assert "triton" in ready
        with SamClient(ready["embedding"], ready["decoder"], timeout=120) as client:
            assert client.model_info().family == "sam2"
            ref = client.embed(png_bytes(sample.image))
            assert not ref.cached
            ys, xs = np.nonzero(sample.masks[0])
            point = np.array([[float(np.median(xs)), float(np.median(ys))]])
            result = client.segment(ref, points=point, labels=[1])
            assert result.masks.shape[1:] == (96, 128)
        assert "sam_image_encoder_sam2_tiny" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(60)
        if proc.stdout is not None:
            proc.stdout.close()

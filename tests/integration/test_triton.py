"""The image encoder on a real tritonserver (CPU, tiny): parity, batching, failure, recovery.

The server is the binary from the nvidia-pytriton wheel, started by ``TritonProcess`` against
a per-run copy of ``triton_models/``; the services run in-process around a ``TritonEncoder``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("tritonclient") is None:
    pytest.skip(
        "tritonclient is not installed (pip install 'samserve[triton]')", allow_module_level=True
    )

from google.protobuf import text_format
from segment_anything import SamPredictor
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from samserve.compose import start_embedding
from samserve.core.encoder import encode_in_process, resize_for_encoder
from samserve.core.errors import DeadlineExceeded, Unavailable
from samserve.core.models import SHIPPED_TINY, LoadedModel, load_model
from samserve.core.triton_encoder import TritonEncoder, triton_model_name
from samserve.procs.triton import (
    TritonModelOptions,
    TritonProcess,
    find_tritonserver,
    write_model_repository,
)
from samserve_client import UnavailableError
from tests.conftest import png_bytes
from tests.stack import StackThread
from tools.shapes import make_shapes_image

if find_tritonserver() is None:
    pytest.skip(
        "no tritonserver binary (pip install 'samserve[triton]': the nvidia-pytriton wheel)",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.triton, pytest.mark.integration, pytest.mark.timeout(180)]

MIN_IOU = 0.995
MAX_SCORE_DIFF = 1e-3
# Batched float32 on CPU against one image in-process: only summation order differs.
EMBED_ATOL = 1e-4
# Tests skip the warm-up run: it buys nothing here and costs seconds on 2 cores.
FAST = {"warmup": "false"}


def start_triton(checkpoint: str | Path, grpc_port: int = 0, seed: int = 0) -> TritonProcess:
    options = TritonModelOptions("tiny", checkpoint, seed=seed, device="cpu", parameters=FAST)
    return TritonProcess.start(options, grpc_port=grpc_port)


class TritonStack(StackThread):
    """The services of ``tests/stack.py`` with the embedding service encoding on Triton."""

    def __init__(
        self,
        model: LoadedModel,
        redis_url: str,
        triton: TritonProcess,
        store_dtype: str = "float16",
    ) -> None:
        super().__init__(model, redis_url, store_dtype=store_dtype)
        self.encoder = TritonEncoder(
            triton.grpc_address, triton.model_name, timeout=60, expect_model_id=model.model_id
        )

    def start(self) -> TritonStack:
        super().start()
        return self

    def start_embedding(self) -> None:
        server = self.server
        self.embedding = self.call(
            start_embedding(self.model, self.store, self.limits, server, encoder=self.encoder)
        )


@dataclass
class Served:
    """A tiny model in this process and the same weights on a running tritonserver."""

    model: LoadedModel
    triton: TritonProcess


@pytest.fixture(scope="module")
def triton_random(tiny_random: LoadedModel) -> Iterator[Served]:
    served = Served(tiny_random, start_triton("random"))
    yield served
    served.triton.stop()  # the one test_triton_down_then_recovers restarted, if it ran


@pytest.fixture(scope="module")
def triton_shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if not SHIPPED_TINY.is_file():
        pytest.skip(f"the shipped tiny weights are not there yet ({SHIPPED_TINY})")
    # One frozen copy for both sides, in case the file is rewritten meanwhile (retraining).
    weights = tmp_path_factory.mktemp("weights") / SHIPPED_TINY.name
    shutil.copyfile(SHIPPED_TINY, weights)
    model = load_model("tiny", weights)
    triton = start_triton(weights)
    yield Served(model, triton)
    triton.stop()


@pytest.fixture(params=["random", "shipped"])
def served(request: pytest.FixtureRequest) -> Served:
    return request.getfixturevalue(f"triton_{request.param}")  # type: ignore[no-any-return]


@pytest.fixture
def triton_stack(served: Served, redis_url: str) -> Iterator[TritonStack]:
    # As in tests/parity: the shape-trained tiny's near-zero edge logits make float16 storage
    # alone flip a few pixels of small masks, so its stack stores float32.
    dtype = "float16" if served.model.source.startswith("random") else "float32"
    stack = TritonStack(served.model, redis_url, served.triton, dtype).start()
    yield stack
    stack.close()


def _counters(metrics_url: str, model_name: str) -> dict[str, int]:
    with urllib.request.urlopen(metrics_url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for name in ("nv_inference_count", "nv_inference_exec_count"):
        m = re.search(rf'^{name}\{{model="{model_name}",version="1"\}} (\d+)', text, re.M)
        assert m is not None, f"{name} missing from Triton's metrics"
        out[name] = int(m.group(1))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.parametrize("variant", ["tiny", "vit_b", "vit_l", "vit_h"])
def test_repository_configs(variant: str, tmp_path: Path) -> None:
    """Every shipped config parses, names its variant, and shares the one model.py."""
    name = write_model_repository(TritonModelOptions(variant, device="cpu"), tmp_path)
    config = text_format.Parse((tmp_path / name / "config.pbtxt").read_text(), mc.ModelConfig())
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert config.name == name == triton_model_name(variant)
    assert (params["variant"], params["device"], params["dtype"]) == (variant, "cpu", "float32")
    assert [i.name for i in config.input] == ["IMAGE", "IMAGE_SIZE"]
    assert [o.name for o in config.output] == ["EMBEDDING", "MODEL_ID"]
    assert list(config.output[0].dims) == [256, 64, 64]
    assert config.dynamic_batching.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT
    shim = (tmp_path / name / "1" / "model.py").read_text()
    assert "from samserve.triton_model import TritonPythonModel" in shim


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", Unavailable),
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", Unavailable),
        ("StatusCode.UNAVAILABLE", "Request timeout expired", DeadlineExceeded),
        ("StatusCode.UNAVAILABLE", "Stream removed (ping timeout)", Unavailable),
        ("StatusCode.UNAVAILABLE", "keepalive watchdog timeout", Unavailable),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceeded),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'x' is not found", Unavailable),
        ("StatusCode.INVALID_ARGUMENT", "IMAGE_SIZE (h, w) must be within", RuntimeError),
    ],
)
def test_error_mapping(status: str, message: str, expected: type[Exception]) -> None:
    """tritonclient's one exception type becomes our domain errors (as Triton 2.51 words them)."""
    encoder = TritonEncoder("127.0.0.1:1", "sam_image_encoder_tiny")
    error = encoder._error(InferenceServerException(message, status), encoder.timeout)
    assert type(error) is expected


async def test_embeddings_equal_in_process(served: Served) -> None:
    """(a) Triton's embedding == encode_in_process, for a landscape and a portrait image sent
    together (so they may share a batch with different paddings)."""
    images = [
        make_shapes_image(seed=3, height=240, width=320).image,
        make_shapes_image(seed=4, height=300, width=200).image,
    ]
    inputs = [resize_for_encoder(im) for im in images]
    encoder = TritonEncoder(served.triton.grpc_address, served.triton.model_name, timeout=60)
    try:
        assert await encoder.ready()
        got = await asyncio.gather(*(encoder.encode(x) for x in inputs))
    finally:
        await encoder.close()
    for x, features in zip(inputs, got, strict=True):
        want = encode_in_process(served.model.sam, x)
        assert features.shape == (256, 64, 64)
        assert features.dtype == np.float32
        np.testing.assert_allclose(features, want, rtol=0, atol=EMBED_ATOL)


def test_segment_parity_through_services(served: Served, triton_stack: TritonStack) -> None:
    """(b) Embed on Triton, Segment in the decoder == official SamPredictor.predict."""
    sample = make_shapes_image(seed=7, height=240, width=320)
    ys, xs = np.nonzero(sample.masks[0])
    point = np.array([[float(np.median(xs)), float(np.median(ys))]])
    label = np.array([1])
    box = sample.boxes[1].astype(np.float64)
    predictor = SamPredictor(served.model.sam)
    predictor.set_image(sample.image)
    with triton_stack.client() as client:
        ref = client.embed(png_bytes(sample.image))
        assert not ref.cached
        for kwargs in ({"points": point, "labels": label}, {"box": box}):
            served_res = client.segment(ref, multimask_output=True, **kwargs)
            masks, scores, _ = predictor.predict(
                point_coords=kwargs.get("points"),
                point_labels=kwargs.get("labels"),
                box=kwargs.get("box"),
                multimask_output=True,
            )
            assert served_res.masks.shape == masks.shape
            for k in range(len(masks)):
                assert _iou(served_res.masks[k], masks[k]) >= MIN_IOU, f"mask {k} of {kwargs}"
                assert abs(float(served_res.scores[k]) - float(scores[k])) <= MAX_SCORE_DIFF


async def test_concurrent_embeds_are_batched(triton_random: Served, redis_url: str) -> None:
    """(c) 8 distinct images at once through the SDK: Triton runs fewer batches than images."""
    triton = triton_random.triton
    images = [
        png_bytes(make_shapes_image(seed=100 + i, height=120, width=160).image) for i in range(8)
    ]
    stack = TritonStack(triton_random.model, redis_url, triton).start()
    try:
        before = await asyncio.to_thread(_counters, triton.metrics_url, triton.model_name)
        async with stack.async_client() as client:
            refs = await asyncio.gather(*(client.embed(im) for im in images))
        after = await asyncio.to_thread(_counters, triton.metrics_url, triton.model_name)
    finally:
        await asyncio.to_thread(stack.close)
    assert len({r.image_id for r in refs}) == 8
    assert not any(r.cached for r in refs)
    inferences = after["nv_inference_count"] - before["nv_inference_count"]
    executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
    assert inferences == 8
    assert executions < inferences, f"{executions} executions for {inferences} images"


def test_triton_down_then_recovers(triton_random: Served, redis_url: str) -> None:
    """(d) Triton killed: Embed is UNAVAILABLE; Triton back on the same port: Embed works.

    Runs last and leaves the module's server restarted (same weights, same gRPC port).
    """
    images = [png_bytes(make_shapes_image(seed=200 + i).image) for i in range(2)]
    triton = triton_random.triton
    stack = TritonStack(triton_random.model, redis_url, triton).start()
    try:
        with stack.client() as client:
            assert not client.embed(images[0]).cached
            triton.kill()
            with pytest.raises(UnavailableError):
                client.embed(images[1])
            assert not stack.call(stack.encoder.ready())
            # A stored embedding needs no encoder: the service still answers it.
            assert client.embed(images[0]).cached

            triton_random.triton = start_triton("random", grpc_port=triton.grpc_port)
            deadline = time.monotonic() + 30
            while True:
                try:
                    ref = client.embed(images[1])
                    break
                except UnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            assert not ref.cached
            assert stack.call(stack.encoder.ready())
    finally:
        stack.close()


def test_triton_with_other_weights_is_refused(
    tiny_random: LoadedModel, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A tritonserver given other weights (seed 1, not 0): the embedding service says
    NOT_SERVING, logs one line naming both model ids, answers Embed UNAVAILABLE and stores
    nothing."""
    import grpc
    import redis
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from samserve.core.models import encoder_model_id

    other = start_triton("random", seed=1)
    stack = TritonStack(tiny_random, redis_url, other)
    try:
        with caplog.at_level("ERROR", logger="samserve.core.triton_encoder"):
            stack.start()
            with stack.client(timeout=60) as client, pytest.raises(UnavailableError):
                client.embed(png_bytes(make_shapes_image(seed=300).image))
            assert not stack.call(stack.encoder.ready())
            with grpc.insecure_channel(stack.embedding_address) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        served = stack.encoder.served_model_id
        assert served is not None and served.startswith("tiny-") and served != tiny_random.model_id
        lines = [r.getMessage() for r in caplog.records if "refusing to serve" in r.getMessage()]
        assert len(lines) == 1 and served in lines[0] and tiny_random.model_id in lines[0]
        assert redis.Redis.from_url(redis_url).keys("samserve:emb:*") == []
        # The id names the compute dtype: the same weights in bf16 are another model.
        assert encoder_model_id("tiny", tiny_random.weights_sha256, "bfloat16") == (
            tiny_random.model_id + "-bf16"
        )
    finally:
        stack.close()
        other.stop()


async def test_triton_channel_is_recycled_and_a_hung_triton_fails_fast(
    tiny_random: LoadedModel,
) -> None:
    """The client replaces its channel every channel_age (a fresh channel resolves the target
    again: new pods get calls), with no call lost; a hung Triton (SIGSTOP: the connection
    stays open, nothing answers) fails its call after keepalive + 5 s, not at the deadline."""
    import os
    import signal

    triton = start_triton("random")
    encoder = TritonEncoder(
        triton.grpc_address,
        triton.model_name,
        timeout=60,
        expect_model_id=tiny_random.model_id,
        keepalive=6,
        channel_age=0.5,
    )
    image = resize_for_encoder(make_shapes_image(seed=9).image)
    try:
        assert await encoder.ready()
        for _ in range(3):
            await asyncio.sleep(0.6)
            assert (await encoder.encode(image)).shape == (256, 64, 64)
        assert encoder.channels >= 3
        encoder.channel_age = 0  # keep this channel: the next call rides on it
        os.kill(triton.process.pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises((Unavailable, DeadlineExceeded)):
            await encoder.encode(image)
        took = time.monotonic() - start
        assert took < 6 + 5 + 5, f"a hung Triton's call took {took:.1f}s"
    finally:
        os.kill(triton.process.pid, signal.SIGCONT)
        await encoder.close()
        triton.stop()

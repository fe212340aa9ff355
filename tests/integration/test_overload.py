"""Admission control, cancellation and coalescing over real gRPC and Redis.

No timing is asserted: a refusal is checked by its status and pushback trailer while the lane
is provably full, and stopped work by the lane emptying (polled with a generous bound).
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from samserve.compose import start_embedding
from samserve.config import DecoderSettings
from samserve.core import keys
from samserve.core.encoder import LocalEncoder
from samserve.core.models import LoadedModel
from samserve_client.pb import (
    common_pb2,
    decoder_pb2,
    decoder_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
)
from tests.conftest import png_bytes
from tests.stack import StackThread
from tools.shapes import make_shapes_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _metric(url: str, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "")
    found = re.search(pattern + r" (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _wait_for(check: Callable[[], bool], limit: float = 60.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def one_worker(tiny_random: LoadedModel, redis_url: str) -> Iterator[StackThread]:
    """A decoder with one thread and no queue: a second job while one runs is refused."""
    settings = DecoderSettings(decoder_workers=1, max_queued_prompts=0)
    stack = StackThread(tiny_random, redis_url, decoder=settings).start()
    yield stack
    stack.close()


def _image_id(stack: StackThread, height: int = 1200, width: int = 1800) -> str:
    with stack.client() as client:
        return client.embed(make_shapes_image(seed=4, height=height, width=width).image).image_id


def test_a_full_lane_refuses_at_once_with_pushback_and_health_answers(one_worker) -> None:
    image_id = _image_id(one_worker)
    heavy = decoder_pb2.SegmentRequest(
        image_id=image_id,
        prompts=[decoder_pb2.Prompt(points=[common_pb2.Point(x=10 + i, y=10, label=1)])
                 for i in range(64)],
        multimask_output=True,
    )  # fmt: skip
    light = decoder_pb2.SegmentRequest(
        image_id=image_id, prompts=[heavy.prompts[0]], multimask_output=False
    )
    url = one_worker.decoder.metrics_url
    options = [("grpc.max_receive_message_length", 256 << 20)]
    with grpc.insecure_channel(one_worker.decoder_address, options=options) as channel:
        stub = decoder_pb2_grpc.DecoderServiceStub(channel)
        busy = stub.Segment.future(heavy, timeout=120)
        assert _wait_for(lambda: _metric(url, "samserve_admission_running", 'lane="decoder"') == 1)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Segment(light, timeout=30)
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert len(busy.result().results) == 64
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "overloaded" in refused.value.details()
    trailers = dict(refused.value.trailing_metadata())
    assert int(trailers["grpc-retry-pushback-ms"]) >= 1
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert _metric(url, "samserve_admission_refused_total", 'lane="decoder"') >= 1


def test_a_size_refusal_says_never_retry(stack) -> None:
    with grpc.insecure_channel(stack.embedding_address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("1", (12000, 12000)).save(buf, format="PNG")
        with pytest.raises(grpc.RpcError) as refused:
            stub.Embed(embedding_pb2.EmbedRequest(image=buf.getvalue()), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(refused.value.trailing_metadata())["grpc-retry-pushback-ms"] == "-1"


def test_segment_everything_stops_when_its_deadline_passes(one_worker) -> None:
    image_id = _image_id(one_worker, 480, 640)
    request = decoder_pb2.SegmentEverythingRequest(
        image_id=image_id, points_per_side=64, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    url = one_worker.decoder.metrics_url
    with grpc.insecure_channel(one_worker.decoder_address) as channel:
        stub = decoder_pb2_grpc.DecoderServiceStub(channel)
        with pytest.raises(grpc.RpcError) as late:
            list(stub.SegmentEverything(request, timeout=2))
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Uncancelled, 4,096 points x 3 masks take minutes here; stopped, the lanes empty at
        # the next piece boundary and a Segment gets the worker.
        assert _wait_for(
            lambda: (
                _metric(url, "samserve_admission_running", 'lane="everything"') == 0
                and _metric(url, "samserve_admission_running", 'lane="decoder"') == 0
            )
        )
        point = decoder_pb2.Prompt(points=[common_pb2.Point(x=10, y=10, label=1)])
        stub.Segment(decoder_pb2.SegmentRequest(image_id=image_id, prompts=[point]), timeout=60)


class _SlowEncoder(LocalEncoder):
    """The real encoder, started a while after it is asked (to hold a run open)."""

    async def encode(self, input_image: np.ndarray, timeout: float | None = None) -> np.ndarray:
        await asyncio.sleep(1.5)
        return await super().encode(input_image, timeout)


class _SlowStack(StackThread):
    def start_embedding(self) -> None:
        server = self.server
        encoder = _SlowEncoder(self.model.sam)
        self.embedding = self.call(
            start_embedding(self.model, self.store, self.limits, server, encoder)
        )


def test_a_leaving_caller_takes_nothing_from_a_coalesced_embed(tiny_random, redis_url) -> None:
    stack = _SlowStack(tiny_random, redis_url).start()
    data = png_bytes(make_shapes_image(seed=8, height=120, width=160).image)
    request = embedding_pb2.EmbedRequest(image=data)
    try:
        with grpc.insecure_channel(stack.embedding_address) as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            leader = stub.Embed.future(request, timeout=0.5)
            time.sleep(0.1)
            follower = stub.Embed.future(request, timeout=60)
            with pytest.raises(grpc.RpcError) as gone:
                leader.result()
            result = follower.result()
        assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert not result.cached
        url = stack.embedding.metrics_url
        assert _metric(url, "samserve_encoder_duration_seconds_count") == 1
        assert _metric(url, "samserve_embed_coalesced_total") == 1
    finally:
        stack.close()


def test_reads_restart_the_ttl_and_concurrent_misses_share_one_get(
    tiny_random, redis_server
) -> None:
    r = redis.Redis(port=redis_server.port)
    r.flushall()
    roomy = DecoderSettings(max_queue_seconds=600)  # 8 calls at once: none refused
    stack = StackThread(tiny_random, redis_server.url, ttl_seconds=100, decoder=roomy).start()
    try:
        with stack.client() as client:
            ref = client.embed(make_shapes_image(seed=9, height=120, width=160).image)
        key = keys.embedding_key(tiny_random.model_id, ref.image_id)
        r.expire(key, 5)
        r.config_resetstat()
        request = decoder_pb2.SegmentRequest(
            image_id=ref.image_id,
            prompts=[decoder_pb2.Prompt(points=[common_pb2.Point(x=9, y=9, label=1)])],
        )
        with grpc.insecure_channel(stack.decoder_address) as channel:
            stub = decoder_pb2_grpc.DecoderServiceStub(channel)
            calls = [stub.Segment.future(request, timeout=60) for _ in range(8)]
            assert all(len(c.result().results) == 1 for c in calls)
        stats = r.info("commandstats")
        reads = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("get", "getex"))
        assert reads == 1
        assert r.ttl(key) > 50
    finally:
        stack.close()
        r.close()


def test_health_and_metrics_answer_while_the_decoder_is_saturated(one_worker) -> None:
    image_id = _image_id(one_worker, 480, 640)
    request = decoder_pb2.SegmentEverythingRequest(
        image_id=image_id, points_per_side=32, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    with grpc.insecure_channel(one_worker.decoder_address) as channel:
        stub = decoder_pb2_grpc.DecoderServiceStub(channel)
        call = stub.SegmentEverything(request, timeout=8)  # runs on the server, unread here
        url = one_worker.decoder.metrics_url
        assert _wait_for(
            lambda: _metric(url, "samserve_admission_running", 'lane="everything"') == 1
        )
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        call.cancel()

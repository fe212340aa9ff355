"""A Redis outage is degraded mode, metrics are exported, embeds coalesce, shutdown drains."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from samserve.procs.redis import RedisProcess
from samserve_client import UnavailableError
from tests.conftest import png_bytes
from tests.stack import StackThread
from tools.shapes import make_shapes_image

pytestmark = pytest.mark.integration


def _health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_redis_outage_is_degraded_not_down(tiny_random) -> None:
    """Redis SIGKILLed: both services stay SERVING with samserve_degraded 1; Segment on an
    image in the decoder's LRU still answers; calls that need Redis fail UNAVAILABLE within
    their deadline; all recovers when Redis returns on its port."""
    redis_proc = RedisProcess.start()
    stack = StackThread(tiny_random, redis_proc.url).start()
    serving = health_pb2.HealthCheckResponse.SERVING
    images = [
        png_bytes(make_shapes_image(seed=60 + i, height=200, width=300).image) for i in range(3)
    ]
    try:
        for address, name in (
            (stack.embedding_address, "samserve.v1.EmbeddingService"),
            (stack.decoder_address, "samserve.v1.DecoderService"),
        ):
            assert _health(address) == serving
            assert _health(address, name) == serving
        with stack.client() as client:
            in_lru = client.embed(images[0])
            client.segment(in_lru, points=[[100, 100]])  # now in the decoder's LRU
            only_in_redis = client.embed(images[1])
        assert "samserve_degraded 0.0" in _metrics(stack.decoder.metrics_url)

        redis_proc.process.kill()
        redis_proc.process.wait()
        for stream in (redis_proc.process.stdout, redis_proc.process.stderr):
            if stream is not None:
                stream.close()
        assert _wait_for(lambda: "samserve_degraded 1.0" in _metrics(stack.decoder.metrics_url))
        assert _wait_for(lambda: "samserve_degraded 1.0" in _metrics(stack.embedding.metrics_url))
        assert _health(stack.decoder_address) == serving
        assert _health(stack.embedding_address) == serving
        with stack.client(timeout=5) as client:
            res = client.segment(in_lru, points=[[120, 90]])
            assert res.masks.shape[1:] == (200, 300)
            for call in (
                lambda: client.segment(only_in_redis, points=[[100, 100]]),
                lambda: client.embed(images[2]),
            ):
                start = time.monotonic()
                with pytest.raises(UnavailableError):
                    call()
                assert time.monotonic() - start < 5.5
        # Redis back on the same port (empty): the services recover without a restart.
        redis_proc = RedisProcess.start(port=redis_proc.port)
        assert _wait_for(lambda: "samserve_degraded 0.0" in _metrics(stack.decoder.metrics_url))
        with stack.client() as client:
            assert not client.embed(images[2]).cached
            client.segment(images[1], points=[[100, 100]])  # re-embedded on NOT_FOUND
    finally:
        stack.close()
        redis_proc.stop()


def test_metrics_are_exported(stack: StackThread, shapes_rgb: np.ndarray) -> None:
    with stack.client() as client:
        ref = client.embed(png_bytes(shapes_rgb))
        client.segment(ref, points=[[100, 100]])
        client.segment(ref, points=[[100, 100]])
    emb = _metrics(stack.embedding.metrics_url)
    dec = _metrics(stack.decoder.metrics_url)
    ok_embed = 'code="OK",method="Embed",service="samserve.v1.EmbeddingService"} 1.0'
    assert f"samserve_requests_total{{{ok_embed}" in emb
    assert "samserve_encoder_duration_seconds_count 1.0" in emb
    assert 'samserve_cache_lookups_total{result="miss",tier="redis"} 1.0' in emb
    assert 'samserve_cache_lookups_total{result="hit",tier="lru"} 1.0' in dec
    assert 'samserve_cache_lookups_total{result="hit",tier="redis"} 1.0' in dec
    assert "samserve_request_duration_seconds_bucket" in dec
    assert "samserve_inflight_requests" in dec
    assert "samserve_redis_up 1.0" in dec


def test_concurrent_embeds_of_one_image_run_the_encoder_once(stack: StackThread) -> None:
    data = png_bytes(make_shapes_image(seed=11, height=600, width=800).image)

    async def burst() -> list:
        async with stack.async_client() as client:
            return await asyncio.gather(*(client.embed(data) for _ in range(6)))

    refs = asyncio.run(burst())
    assert len({r.image_id for r in refs}) == 1
    assert sum(not r.cached for r in refs) >= 1
    text = _metrics(stack.embedding.metrics_url)
    assert "samserve_encoder_duration_seconds_count 1.0" in text


def test_shutdown_finishes_in_flight_calls(stack: StackThread) -> None:
    data = png_bytes(make_shapes_image(seed=12, height=1200, width=1800).image)
    result: dict = {}

    def call() -> None:
        with stack.client() as client:
            try:
                result["ref"] = client.embed(data)
            except Exception as e:  # pragma: no cover - reported below
                result["error"] = e

    t = threading.Thread(target=call)
    t.start()
    inflight = (
        'samserve_inflight_requests{method="Embed",service="samserve.v1.EmbeddingService"} 1.0'
    )
    assert _wait_for(lambda: inflight in _metrics(stack.embedding.metrics_url))
    stack.stop_embedding(grace=30)
    t.join(30)
    assert "error" not in result, result.get("error")
    assert result["ref"].cached is False

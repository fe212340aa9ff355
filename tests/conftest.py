"""Shared fixtures: a private redis-server, models, running stacks, generated images."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import redis
from PIL import Image

from samserve.core.models import LoadedModel, load_model
from samserve.procs.redis import RedisProcess
from tests.cluster import RedisClusterProcs
from tests.pki import Pki, make_pki
from tests.stack import StackThread
from tools.shapes import make_shapes_image


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """A real redis-server on a free loopback port for the whole session."""
    proc = RedisProcess.start()
    yield proc
    proc.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """The session Redis, emptied for this test."""
    r = redis.Redis(port=redis_server.port)
    r.flushall()
    r.close()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    """A real local Redis Cluster of three masters for the whole session."""
    cluster = RedisClusterProcs(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: RedisClusterProcs) -> str:
    """The session cluster, emptied for this test: ``redis+cluster://`` naming a seed node."""
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates for TLS tests (one CA for the servers and clients, another CA, an
    expired client certificate)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tiny_random() -> LoadedModel:
    return load_model("tiny", "random", seed=0)


@pytest.fixture(scope="session")
def tiny_trained() -> LoadedModel:
    model = load_model("tiny")
    assert model.source == "shipped", "the shape-trained tiny weights are missing"
    return model


@pytest.fixture
def stack(tiny_random: LoadedModel, redis_url: str) -> Iterator[StackThread]:
    """Both services with the random tiny model against a clean Redis."""
    s = StackThread(tiny_random, redis_url).start()
    yield s
    s.close()


@pytest.fixture(scope="session")
def shapes_rgb() -> np.ndarray:
    """A 240x320 RGB image of bright shapes on a dark background."""
    return make_shapes_image(seed=1, height=240, width=320).image


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(rgb: np.ndarray, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, **kwargs)
    return buf.getvalue()

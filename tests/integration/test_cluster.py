"""Redis Cluster and the cross-replica encode lease, on a real local cluster of three masters.

The store names one seed node (``redis+cluster://``) and the client finds the rest; an image's
entry, crops and lease share one slot. Replicas are real ``samserve embedding`` processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from redis.crc import key_slot

from samserve.core import keys
from samserve.core.errors import DeadlineExceeded
from samserve.core.lease import EncodeLease
from samserve.core.store import Embedding, RedisStore
from samserve_client import SamClient
from tests.cluster import RedisClusterProcs
from tests.conftest import png_bytes
from tests.replicas import Replica
from tools.shapes import make_shapes_image

pytestmark = [pytest.mark.integration]

MODEL = "tiny-0123456789abcdef"


def _emb(seed: int) -> Embedding:
    rng = np.random.default_rng(seed)
    return Embedding(rng.standard_normal((256, 64, 64)).astype(np.float32), (480, 640), (768, 1024))


def test_store_on_a_cluster_spreads_images_and_keeps_an_images_keys_together(
    redis_cluster: RedisClusterProcs, cluster_url: str
) -> None:
    async def go() -> None:
        store = RedisStore(cluster_url, ttl_seconds=60, dtype="float32")
        assert store.cluster and await store.ping()
        ids = [hashlib.sha256(bytes([i])).hexdigest() for i in range(12)]
        for i, image_id in enumerate(ids):
            await store.put(MODEL, image_id, _emb(i))
            await store.put(MODEL, keys.crop_id(image_id, [0, 0, 320, 240]), _emb(100 + i))
        for i, image_id in enumerate(ids):
            got = await store.get(MODEL, image_id)
            assert got is not None
            np.testing.assert_array_equal(got.features, _emb(i).features)
            crop = await store.get(MODEL, keys.crop_id(image_id, [0, 0, 320, 240]))
            assert crop is not None
            np.testing.assert_array_equal(crop.features, _emb(100 + i).features)
        await store.touch(MODEL, ids[0])
        assert await store.get("other-model", ids[0]) is None
        await store.close()

    asyncio.run(go())
    # The entries landed on every master; each image's whole and crop entries on one node.
    client = redis_cluster.client()
    nodes = {n.name: n for n in client.get_primaries()}
    per_node = {name: client.dbsize(target_nodes=node) for name, node in nodes.items()}
    assert len(per_node) == 3 and all(count > 0 for count in per_node.values()), per_node
    for key in client.scan_iter(match=b"samserve:emb:*", count=100):
        image_id = key.decode().split("{")[1].split("}")[0]
        assert key_slot(key) == key_slot(keys.embedding_key(MODEL, image_id).encode())
    client.close()


def test_lease_is_exclusive_renewed_and_released_by_its_holder_only(cluster_url: str) -> None:
    async def go() -> None:
        store = RedisStore(cluster_url)
        image = "ab" * 32
        assert await store.lease_acquire(MODEL, image, "t1", 500)
        assert not await store.lease_acquire(MODEL, image, "t2", 500)
        assert await store.lease_renew(MODEL, image, "t1", 2000)
        assert not await store.lease_renew(MODEL, image, "t2", 2000)
        await store.lease_release(MODEL, image, "t2")  # not its lease: stays
        assert not await store.lease_acquire(MODEL, image, "t2", 500)
        await store.lease_release(MODEL, image, "t1")
        assert await store.lease_acquire(MODEL, image, "t2", 200)
        await asyncio.sleep(0.35)  # a holder that never renews loses it
        assert await store.lease_acquire(MODEL, image, "t3", 200)
        await store.close()

    asyncio.run(go())


def test_a_waiter_answers_from_the_holders_entry_and_takes_over_a_dead_lease(
    cluster_url: str,
) -> None:
    async def go() -> None:
        store = RedisStore(cluster_url)
        lease = EncodeLease(store, MODEL, lease_seconds=0.3)
        image = "cd" * 32
        entry: dict[str, str] = {}

        async def lookup() -> str | None:
            return entry.get("v")

        started = asyncio.Event()

        async def slow() -> str:
            started.set()
            await asyncio.sleep(1.0)  # renewed every 0.1 s, so the waiter never takes over
            entry["v"] = "from holder"
            return "ran"

        holder = asyncio.create_task(lease.run(image, slow, lookup, None))
        await started.wait()
        result, outcome = await lease.run(image, lambda: _fail(), lookup, None)
        assert (result, outcome.held) == ("from holder", False)
        assert (await holder)[0] == "ran"

        # A "dead" holder: the lease is taken and never renewed nor released.
        dead = "ef" * 32
        assert await store.lease_acquire(MODEL, dead, "gone", 300)
        start = time.monotonic()

        async def encode() -> str:
            return "took over"

        result, outcome = await lease.run(dead, encode, lambda: _none(), None)
        assert outcome.held and result == "took over"
        assert 0.2 < time.monotonic() - start < 2.0
        assert await store.lease_acquire(MODEL, "12" * 32, "alive", 5000)
        with pytest.raises(DeadlineExceeded):
            await lease.run("12" * 32, encode, lambda: _none(), time.monotonic() + 0.3)
        await store.close()

    asyncio.run(go())


async def _fail() -> str:
    raise AssertionError("a waiter must not encode while the holder is alive")


async def _none() -> None:
    return None


@pytest.fixture(scope="module")
def cold_images() -> list[bytes]:
    return [
        png_bytes(make_shapes_image(seed=40 + i, height=200, width=300).image) for i in range(3)
    ]


def _replica(url: str, *args: str) -> Replica:
    return Replica(
        "embedding", "--model", "tiny", "--checkpoint", "random", "--redis-url", url, *args
    )


def test_sixteen_concurrent_embeds_across_two_replicas_encode_once(
    cluster_url: str, cold_images: list[bytes]
) -> None:
    """16 calls for one cold image, 8 to each of two embedding processes: 1 encoder run."""
    a = _replica(cluster_url)
    try:
        b = _replica(cluster_url)
    except BaseException:
        a.close()
        raise
    try:
        clients = [SamClient(a.address, a.address), SamClient(b.address, b.address)]
        for image in cold_images[:2]:
            before = a.metric("samserve_encoder_duration_seconds_count") + b.metric(
                "samserve_encoder_duration_seconds_count"
            )
            barrier = threading.Barrier(16)

            def embed(i: int, image: bytes = image, barrier: threading.Barrier = barrier) -> bool:
                barrier.wait()
                return clients[i % 2].embed(image).cached

            with ThreadPoolExecutor(16) as pool:
                cached = list(pool.map(embed, range(16)))
            runs = (
                a.metric("samserve_encoder_duration_seconds_count")
                + b.metric("samserve_encoder_duration_seconds_count")
                - before
            )
            assert runs == 1, f"{runs} encoder runs for one image across two replicas"
            assert cached.count(False) >= 1
        waited = a.metric("samserve_encode_lease_total") + b.metric("samserve_encode_lease_total")
        assert waited >= 2  # at least one held and one waited, per image
        for c in clients:
            c.close()
    finally:
        a.close()
        b.close()


def test_a_lease_holder_killed_mid_encode_is_taken_over_by_another_replica(
    redis_cluster: RedisClusterProcs, cluster_url: str, cold_images: list[bytes]
) -> None:
    """The holder is SIGKILLed as soon as it holds the lease (before it stores anything: its
    encoder, on one thread, takes about a second); its lease (2 s) expires and the other
    replica's call, waiting meanwhile, takes it over, encodes and answers."""
    args = ("--model", "tiny", "--checkpoint", "random", "--encode-lease", "2")
    holder = Replica("embedding", "--redis-url", cluster_url, *args, env={"OMP_NUM_THREADS": "1"})
    try:
        other = Replica("embedding", "--redis-url", cluster_url, *args)
    except BaseException:
        holder.close()
        raise
    image = cold_images[2]
    image_id = hashlib.sha256(image).hexdigest()
    client = redis_cluster.client()
    try:
        model_id = holder.text().split("model tiny (")[1].split(")")[0]
        lease_key, entry_key = (
            keys.lease_key(model_id, image_id),
            keys.embedding_key(model_id, image_id),
        )
        with (
            SamClient(holder.address, holder.address, timeout=120) as c1,
            SamClient(other.address, other.address, timeout=120) as c2,
            ThreadPoolExecutor(2) as pool,
        ):
            first = pool.submit(c1.embed, image)
            deadline = time.monotonic() + 60
            while not client.exists(lease_key):
                assert time.monotonic() < deadline, "the holder never took the lease"
                time.sleep(0.005)
            start = time.monotonic()
            second = pool.submit(c2.embed, image)
            holder.kill()
            assert not client.exists(entry_key), "the holder finished before it was killed"
            with pytest.raises(Exception):  # noqa: B017 - the killed replica's call fails
                first.result(60)
            ref = second.result(120)
            took = time.monotonic() - start
        assert not ref.cached and ref.image_id == image_id
        assert other.metric("samserve_encoder_duration_seconds_count") == 1
        assert other.metric("samserve_encode_lease_total") == 1  # it held the lease once
        assert client.exists(entry_key)
        assert took < 2 + 30, took  # one lease period, then one encode
    finally:
        client.close()
        holder.close()
        other.close()


def test_a_decoder_killed_during_sdk_traffic_costs_no_call(
    cluster_url: str, cold_images: list[bytes]
) -> None:
    """Two decoder replicas behind one ``ipv4:a,b`` target; one is SIGKILLed mid-traffic.
    The SDK balances round-robin and retries UNAVAILABLE: no call fails."""
    args = ("--model", "tiny", "--checkpoint", "random", "--redis-url", cluster_url)
    # A generous queue: overload shedding (RESOURCE_EXHAUSTED) on 2 busy cores is not failover.
    lenient = ("--max-queue-seconds", "30")
    started: list[Replica] = []
    try:
        for kind, extra in (("embedding", ()), ("decoder", lenient), ("decoder", lenient)):
            started.append(Replica(kind, *args, *extra))
    except BaseException:
        for r in started:
            r.close()
        raise
    embedding, decoders = started[0], started[1:]
    target = "ipv4:" + ",".join(d.address for d in decoders)
    try:
        with SamClient(embedding.address, target, timeout=30) as client:
            ref = client.embed(cold_images[0])
            done, failures, lock = [0], [], threading.Lock()

            def call(i: int) -> None:
                try:
                    client.segment(ref, points=[[50 + i % 100, 60]], labels=[1])
                except Exception as e:
                    with lock:
                        failures.append(repr(e))
                with lock:
                    done[0] += 1
                    if done[0] == 40:  # mid-traffic: 3 other calls are in flight
                        decoders[0].kill()

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(call, range(120)))
            calls = done[0]
        served = decoders[1].metric("samserve_requests_total")
        print(f"decoder failover: {len(failures)} failed calls out of {calls}")
        assert failures == [], failures
        assert served >= 80  # after the kill, the survivor took every call
    finally:
        embedding.close()
        for d in decoders:
            d.close()

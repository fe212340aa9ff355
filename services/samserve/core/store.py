"""Embedding storage: one Redis value per embedding (header + raw array), an LRU in front.

Value layout (``keys.LAYOUT_VERSION``)::

    b"SAMEMB" | u8 version | u32 header length (LE) | header JSON | payload

The header names the model id, dtype, shape, original and input size and the payload's
sha256. Anything that does not match what the reader expects is a miss, never an answer.
float16 is the default storage: half the bytes, and parity holds (mask IoU >= 0.9997).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from segment_anything.utils.transforms import ResizeLongestSide

from samserve.core import keys
from samserve.core.errors import Unavailable

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

#: The encoder's input side (every SAM 1 variant).
IMG_SIZE = 1024

_MAGIC = b"SAMEMB"
_HEAD = struct.Struct("<6sBI")
_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True, slots=True)
class Embedding:
    """An image embedding and the geometry needed to map prompts and masks.

    Attributes:
        features: (256, 64, 64) image embedding (float16 or float32).
        original_size: (H, W) of the image after EXIF orientation.
        input_size: (h, w) of the resized image fed to the encoder (long side 1024).
        high_res_features: a SAM 2.1 model's high-resolution maps, finest first; empty for
            SAM 1, whose value layout stores none.
    """

    features: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    high_res_features: tuple[np.ndarray, ...] = ()


def serialize(emb: Embedding, model_id: str, dtype: str = "float16") -> bytes:
    """Bytes of one stored value (header + payload) with ``features`` cast to ``dtype``."""
    if keys.layout_version(model_id) == keys.LAYOUT_VERSION_SAM2:
        return _serialize_sam2(emb, model_id, dtype)
    payload = np.ascontiguousarray(emb.features, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"))
    raw = payload.tobytes()
    header = json.dumps(
        {
            "model_id": model_id,
            "dtype": dtype,
            "shape": list(payload.shape),
            "original_size": list(emb.original_size),
            "input_size": list(emb.input_size),
            "sha256": hashlib.sha256(raw).hexdigest(),
        },
        separators=(",", ":"),
    ).encode()
    return _HEAD.pack(_MAGIC, keys.LAYOUT_VERSION, len(header)) + header + raw


#: Largest header a reader accepts (a real one is ~300 bytes).
MAX_HEADER_BYTES = 4096
#: The one shape a stored SAM 1 embedding has.
EMBEDDING_SHAPE = (256, 64, 64)
#: Largest original side a reader accepts (the services cap images at tens of megapixels).
MAX_SIDE = 1 << 16


def _pair(value: object) -> tuple[int, int]:
    """Two positive ints from a JSON list, or ValueError."""
    if not (isinstance(value, list) and len(value) == 2):
        raise ValueError(f"expected [h, w], got {value!r}")
    h, w = value
    if not all(type(v) is int and 1 <= v <= MAX_SIDE for v in (h, w)):
        raise ValueError(f"expected two sides in 1..{MAX_SIDE}, got {value!r}")
    return h, w


def deserialize(value: bytes, model_id: str) -> Embedding | None:
    """The embedding in ``value``, or None when anything in it does not match or check out.

    A reader trusts nothing it reads: the header's size, type and nesting, the shape, the
    geometry (the input size must be what ``ResizeLongestSide(1024)`` makes of the original)
    and the payload's length and checksum are all checked before an array is made, so a
    corrupted or hostile entry is a miss, never an error or a large allocation.
    """
    if keys.layout_version(model_id) == keys.LAYOUT_VERSION_SAM2:
        return _deserialize_sam2(value, model_id)
    try:
        magic, version, hlen = _HEAD.unpack_from(value)
        if magic != _MAGIC or version != keys.LAYOUT_VERSION or hlen > MAX_HEADER_BYTES:
            return None
        header = json.loads(value[_HEAD.size : _HEAD.size + hlen])
        if not isinstance(header, dict) or header.get("model_id") != model_id:
            return None
        dtype = np.dtype(_DTYPES[header["dtype"]]).newbyteorder("<")
        if header["shape"] != list(EMBEDDING_SHAPE):
            return None
        original, input_size = _pair(header["original_size"]), _pair(header["input_size"])
        if input_size != ResizeLongestSide.get_preprocess_shape(*original, IMG_SIZE):
            return None
        raw = value[_HEAD.size + hlen :]
        if len(raw) != math.prod(EMBEDDING_SHAPE) * dtype.itemsize:
            return None
        if hashlib.sha256(raw).hexdigest() != header["sha256"]:
            return None
    except (struct.error, ValueError, KeyError, TypeError, RecursionError) as e:
        log.warning("unreadable embedding entry for model %s: %s", model_id, e)
        return None
    features = np.frombuffer(raw, dtype=dtype).reshape(EMBEDDING_SHAPE)
    return Embedding(features=features, original_size=original, input_size=input_size)


#: A SAM 2 / 2.1 entry (layout ``keys.LAYOUT_VERSION_SAM2``): the image embedding, then the
#: high-resolution maps finest first, as ``SAM2ImagePredictor`` keeps them.
SAM2_SHAPES = ((256, 64, 64), (32, 256, 256), (64, 128, 128))
#: SAM 2's encoder input: every image is resized to this square, aspect ratio not kept.
SAM2_INPUT_SIZE = (1024, 1024)


def _serialize_sam2(emb: Embedding, model_id: str, dtype: str) -> bytes:
    """Layout 2: the header gives ``shapes`` (one per tensor) and the payload is the tensors'
    bytes one after the other, each cast to ``dtype``."""
    tensors = (emb.features, *emb.high_res_features)
    le = np.dtype(_DTYPES[dtype]).newbyteorder("<")
    parts = [np.ascontiguousarray(t, dtype=le) for t in tensors]
    raw = b"".join(p.tobytes() for p in parts)
    header = json.dumps(
        {
            "model_id": model_id,
            "dtype": dtype,
            "shapes": [list(p.shape) for p in parts],
            "original_size": list(emb.original_size),
            "input_size": list(emb.input_size),
            "sha256": hashlib.sha256(raw).hexdigest(),
        },
        separators=(",", ":"),
    ).encode()
    return _HEAD.pack(_MAGIC, keys.LAYOUT_VERSION_SAM2, len(header)) + header + raw


def _deserialize_sam2(value: bytes, model_id: str) -> Embedding | None:
    """Layout 2's :func:`deserialize`: the same checks (version, model, shapes, geometry,
    length, checksum) before any array is made."""
    try:
        magic, version, hlen = _HEAD.unpack_from(value)
        if magic != _MAGIC or version != keys.LAYOUT_VERSION_SAM2 or hlen > MAX_HEADER_BYTES:
            return None
        header = json.loads(value[_HEAD.size : _HEAD.size + hlen])
        if not isinstance(header, dict) or header.get("model_id") != model_id:
            return None
        dtype = np.dtype(_DTYPES[header["dtype"]]).newbyteorder("<")
        if header["shapes"] != [list(s) for s in SAM2_SHAPES]:
            return None
        original, input_size = _pair(header["original_size"]), _pair(header["input_size"])
        if input_size != SAM2_INPUT_SIZE:
            return None
        raw = value[_HEAD.size + hlen :]
        sizes = [math.prod(s) * dtype.itemsize for s in SAM2_SHAPES]
        if len(raw) != sum(sizes):
            return None
        if hashlib.sha256(raw).hexdigest() != header["sha256"]:
            return None
    except (struct.error, ValueError, KeyError, TypeError, RecursionError) as e:
        log.warning("unreadable embedding entry for model %s: %s", model_id, e)
        return None
    tensors, offset = [], 0
    for shape, size in zip(SAM2_SHAPES, sizes, strict=True):
        tensors.append(np.frombuffer(raw, dtype=dtype, count=size // dtype.itemsize, offset=offset))
        tensors[-1] = tensors[-1].reshape(shape)
        offset += size
    return Embedding(
        features=tensors[0],
        original_size=original,
        input_size=input_size,
        high_res_features=tuple(tensors[1:]),
    )


class EmbeddingStore(Protocol):
    """Where embeddings live, keyed by (model id, image id)."""

    async def get(self, model_id: str, image_id: str) -> Embedding | None: ...

    async def put(self, model_id: str, image_id: str, emb: Embedding) -> None: ...

    async def touch(self, model_id: str, image_id: str) -> None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


#: URL schemes that name a seed node of a Redis Cluster, and the plain scheme each stands for.
CLUSTER_SCHEMES = {"redis+cluster://": "redis://", "rediss+cluster://": "rediss://"}

#: Extend a lease only while it is still ours (KEYS[1] lease, ARGV[1] token, ARGV[2] ms).
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
#: Delete a lease only while it is still ours (KEYS[1] lease, ARGV[1] token).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def cluster_url(url: str) -> str | None:
    """The plain ``redis://``/``rediss://`` URL of a cluster seed node, or None (not a cluster)."""
    for scheme, plain in CLUSTER_SCHEMES.items():
        if url.startswith(scheme):
            return plain + url[len(scheme) :]
    return None


class RedisStore:
    """Embeddings in Redis: one value per key, optional TTL, short timeouts, few retries.

    The URL (which may hold a user and password) is never logged or kept.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://`` for TLS, ``unix://``, or
            ``redis+cluster://host:port`` / ``rediss+cluster://`` naming one seed node of a
            Redis Cluster (the client discovers the other nodes and follows redirections).
        ttl_seconds: expiry of each entry; 0 keeps entries until Redis evicts them.
        dtype: storage dtype of new entries (``float16`` or ``float32``).
        timeout: socket connect/read timeout in seconds.
        tls_ca, tls_cert, tls_key: PEM files for ``rediss://``: the CA to trust, and the
            client certificate and key when the server requires them.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: int = 0,
        dtype: str = "float16",
        timeout: float = 2.0,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}")
        self.ttl_seconds = ttl_seconds
        self.dtype = dtype
        tls: dict[str, Any] = {}
        if tls_ca is not None:
            tls["ssl_ca_certs"] = tls_ca
        if tls_cert is not None and tls_key is not None:
            tls["ssl_certfile"], tls["ssl_keyfile"] = tls_cert, tls_key
        # redis-py's defaults retry for up to ~50 s; a serving path wants a fast UNAVAILABLE.
        retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1)
        seed = cluster_url(url)
        self.cluster = seed is not None
        self._redis: aioredis.Redis | RedisCluster
        if seed is not None:
            self._redis = RedisCluster.from_url(
                seed,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=retry,
                health_check_interval=30,
                **tls,
            )
        else:
            self._redis = aioredis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=retry,
                health_check_interval=30,
                **tls,
            )

    async def get(self, model_id: str, image_id: str) -> Embedding | None:
        """The stored embedding, or None; a hit's TTL starts again (GETEX), so an image in
        active use does not expire in the middle of a session."""
        key = keys.embedding_key(model_id, image_id)
        try:
            if self.ttl_seconds:
                value = await self._redis.getex(key, ex=self.ttl_seconds)
            else:
                value = await self._redis.get(key)
        except RedisError as e:
            raise Unavailable("embedding store unreachable") from e
        if not isinstance(value, bytes):  # None: a miss (the client never decodes to str)
            return None
        return deserialize(value, model_id)

    async def put(self, model_id: str, image_id: str, emb: Embedding) -> None:
        value = serialize(emb, model_id, self.dtype)
        try:
            await self._redis.set(
                keys.embedding_key(model_id, image_id), value, ex=self.ttl_seconds or None
            )
        except RedisError as e:
            raise Unavailable("embedding store unreachable") from e

    async def touch(self, model_id: str, image_id: str) -> None:
        """Start the entry's TTL again (for reads answered from an in-process cache)."""
        if not self.ttl_seconds:
            return
        try:
            await self._redis.expire(keys.embedding_key(model_id, image_id), self.ttl_seconds)
        except RedisError as e:
            raise Unavailable("embedding store unreachable") from e

    async def lease_acquire(self, model_id: str, image_id: str, token: str, ms: int) -> bool:
        """Take the encode lease of ``image_id`` for ``ms`` unless another holder has it."""
        try:
            return bool(
                await self._redis.set(keys.lease_key(model_id, image_id), token, nx=True, px=ms)
            )
        except RedisError as e:
            raise Unavailable("embedding store unreachable") from e

    async def lease_renew(self, model_id: str, image_id: str, token: str, ms: int) -> bool:
        """Extend the lease to ``ms`` from now; False when it is no longer ours."""
        try:
            result = self._redis.eval(_RENEW, 1, keys.lease_key(model_id, image_id), token, ms)
            return bool(await result)
        except RedisError as e:
            raise Unavailable("embedding store unreachable") from e

    async def lease_release(self, model_id: str, image_id: str, token: str) -> None:
        """Drop the lease if it is still ours (compare and delete)."""
        try:
            result = self._redis.eval(_RELEASE, 1, keys.lease_key(model_id, image_id), token)
            await result
        except RedisError as e:
            raise Unavailable("embedding store unreachable") from e

    async def ping(self) -> bool:
        """True when Redis answers (on a cluster: every primary)."""
        try:
            return bool(await self._redis.ping())
        except RedisError:
            return False

    async def close(self) -> None:
        await self._redis.aclose()


class LruCache(Generic[K, V]):
    """A bounded in-process LRU (the decoder's first tier of ready embeddings)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: K, item: V) -> None:
        if self.capacity <= 0:
            return
        self._items[key] = item
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

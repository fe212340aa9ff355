"""The embedding service's logic: hash, look up, decode, encode once, store."""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass

import numpy as np

from samserve.core import amg, keys
from samserve.core.admission import Lane
from samserve.core.coalesce import SingleFlight
from samserve.core.encoder import Encoder
from samserve.core.errors import DeadlineExceeded, InvalidInput, NotFound, ResourceExhausted
from samserve.core.family import SAM1, EncoderOutput, Family
from samserve.core.images import content_hash, decode_cost, decode_image, image_size
from samserve.core.lease import EncodeLease
from samserve.core.metrics import Metrics
from samserve.core.models import check_requested_model
from samserve.core.store import Embedding, EmbeddingStore


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """What Embed answers: the id, whether it was already stored, and the geometry."""

    image_id: str
    cached: bool
    original_size: tuple[int, int]
    encode_seconds: float


@dataclass(frozen=True, slots=True)
class CropsResult:
    """What EmbedCrops answers: the id, the geometry, crops needed and crops encoded now."""

    image_id: str
    original_size: tuple[int, int]
    crops: int
    encoded: int


@dataclass(frozen=True, slots=True)
class EmbedLimits:
    """What one embedding service accepts and how much it runs at once.

    Attributes:
        max_image_bytes: largest accepted upload.
        max_pixels: largest accepted image (checked from the header).
        max_decode_bytes: memory one image decode may take (see ``images.decode_cost``).
        decode_slots: image decodes running at once.
        encoder_slots: encoder runs in flight at once (1 in process; Triton batches more).
        max_queued_encodes: images allowed to wait for the encoder; past it, RESOURCE_EXHAUSTED.
        queue_full_wait: seconds a call that finds a queue full waits for room.
    """

    max_image_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_decode_bytes: int = 1024 * 1024 * 1024
    decode_slots: int = 2
    encoder_slots: int = 1
    max_queued_encodes: int = 8
    queue_full_wait: float = 0.0


class Embedder:
    """Embeds images for one model.

    Admission: a stored image is answered at once; an image that needs the encoder takes a
    decode slot (``decode`` lane) and an encoder slot (``encoder`` lane, cost = images to
    encode); past their queues it is refused with RESOURCE_EXHAUSTED and a retry hint.

    Args:
        variant: the model variant this service runs (requests naming another are rejected).
        model_id: identity used in cache keys.
        encoder: the image encoder (in-process or Triton).
        store: where embeddings are kept.
        metrics: metrics sink.
        limits: sizes and concurrency.
        family: the model's family (what the encoder takes and returns).
        lease: the cross-replica encode lease (None: only in-process single-flight).
    """

    def __init__(
        self,
        *,
        variant: str,
        model_id: str,
        encoder: Encoder,
        store: EmbeddingStore,
        metrics: Metrics,
        limits: EmbedLimits,
        family: Family = SAM1,
        lease: EncodeLease | None = None,
    ) -> None:
        self.variant = variant
        self.family = family
        self.lease = lease
        self.model_id = model_id
        self.encoder = encoder
        self.store = store
        self.metrics = metrics
        self.limits = limits
        self._flight: SingleFlight[EmbedResult] = SingleFlight()
        self._crop_flight: SingleFlight[bool] = SingleFlight()
        wait = limits.queue_full_wait
        self._encodes = Lane(
            "encoder", limits.encoder_slots, limits.max_queued_encodes, metrics, overflow_wait=wait
        )
        self._decodes = Lane(
            "decode", limits.decode_slots, limits.max_queued_encodes, metrics, overflow_wait=wait
        )

    def check_model(self, model: str) -> None:
        """Reject a request that names a model this service does not run."""
        check_requested_model(model, self.variant, self.model_id)

    async def embed(
        self, data: bytes, model: str = "", deadline: float | None = None
    ) -> EmbedResult:
        """Store the embedding of encoded image ``data`` unless it is stored already.

        Args:
            data: the encoded image file.
            model: the model the caller asks for ("" = this service's).
            deadline: ``time.monotonic()`` by which the caller needs the answer (None: none);
                an encoder run is not started past it, and Triton gets what remains of it as
                its queue timeout.
        """
        self.check_model(model)
        if len(data) > self.limits.max_image_bytes:
            raise ResourceExhausted(
                f"image: {len(data)} bytes is over the limit of {self.limits.max_image_bytes}"
            )
        if not data:
            raise InvalidInput("image: empty")
        image_id = content_hash(data)
        result, shared = await self._flight.run(
            image_id, lambda: self._embed(image_id, data, deadline)
        )
        if shared:
            self.metrics.coalesced.inc()
        return result

    async def stored(self, image_id: str, model: str = "") -> Embedding:
        """The stored embedding of ``image_id``, for clients that decode themselves.

        Raises:
            InvalidInput: ``image_id`` is not a hex sha256, or ``model`` is not this service's.
            NotFound: nothing stored for it under this model.
            Unavailable: Redis unreachable.
        """
        self.check_model(model)
        if not keys.is_image_id(image_id):
            raise InvalidInput("image_id: expected a lowercase hex sha256 (64 characters)")
        emb = await self.store.get(self.model_id, image_id)
        if emb is None:
            raise NotFound(f"image_id: no embedding stored for {image_id} under {self.model_id}")
        return emb

    async def embed_crops(
        self,
        data: bytes,
        crop_n_layers: int,
        crop_overlap_ratio: float,
        model: str = "",
        deadline: float | None = None,
    ) -> CropsResult:
        """Store the whole-image embedding of ``data`` and every crop embedding that
        segment-everything needs for these crop parameters (crops already stored are skipped).

        Each crop is cut, resized and encoded exactly as ``SamAutomaticMaskGenerator._process_crop``
        does with ``SamPredictor.set_image(image[y0:y1, x0:x1])``, and stored under
        :func:`keys.crop_id`. The first crop box is the whole image: its embedding is the
        whole-image one.
        """
        amg.validate_crop_params(crop_n_layers, crop_overlap_ratio)
        whole = await self.embed(data, model, deadline)
        boxes, _ = amg.crop_boxes(whole.original_size, crop_n_layers, crop_overlap_ratio)
        h, w = whole.original_size
        missing = []
        for box in boxes:
            cid = keys.crop_id(whole.image_id, box)
            if box != [0, 0, w, h] and await self.store.get(self.model_id, cid) is None:
                missing.append((box, cid))
        encoded = 0
        if missing:
            image = await self._decode(data)
            async with self._encodes.admit(len(missing)):
                for box, cid in missing:
                    ran, shared = await self._crop_flight.run(
                        cid, functools.partial(self._embed_crop, image, box, cid, deadline)
                    )
                    encoded += int(ran and not shared)
        return CropsResult(whole.image_id, whole.original_size, len(boxes), encoded)

    async def _decode(self, data: bytes) -> np.ndarray:
        """Decode within the per-decode memory budget, a bounded number at a time."""
        width, height = await asyncio.to_thread(image_size, data)
        if width * height > self.limits.max_pixels:
            raise ResourceExhausted(
                f"image: {width}x{height} is over the limit of {self.limits.max_pixels} pixels"
            )
        if decode_cost(width * height) > self.limits.max_decode_bytes:
            raise ResourceExhausted(
                f"image: decoding {width}x{height} needs about {decode_cost(width * height)} "
                f"bytes, over the limit of {self.limits.max_decode_bytes}"
            )
        async with self._decodes.admit():
            return await asyncio.to_thread(decode_image, data, max_pixels=self.limits.max_pixels)

    async def _encode(self, input_image: np.ndarray, deadline: float | None) -> EncoderOutput:
        timeout = None
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise DeadlineExceeded("image encoder: the caller's deadline has passed")
        start = time.perf_counter()
        features = await self.encoder.encode(input_image, timeout)
        self.metrics.encoder_seconds.observe(time.perf_counter() - start)
        return features

    async def _embed_crop(
        self, image: np.ndarray, box: list[int], cid: str, deadline: float | None
    ) -> bool:
        if await self.store.get(self.model_id, cid) is not None:
            return False
        work = functools.partial(self._encode_crop, image, box, cid, deadline)
        if self.lease is None:
            return await work()

        async def lookup() -> bool | None:
            return False if await self.store.get(self.model_id, cid) is not None else None

        ran, outcome = await self.lease.run(cid, work, lookup, deadline)
        self.metrics.lease.labels("held" if outcome.held else "waited").inc()
        return ran

    async def _encode_crop(
        self, image: np.ndarray, box: list[int], cid: str, deadline: float | None
    ) -> bool:
        x0, y0, x1, y1 = box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1, :])
        input_image = await asyncio.to_thread(self.family.encoder_input, crop)
        features = await self._encode(input_image, deadline)
        size = (int(crop.shape[0]), int(crop.shape[1]))
        await self.store.put(self.model_id, cid, self.family.embedding(features, size, input_image))
        return True

    async def _embed(self, image_id: str, data: bytes, deadline: float | None) -> EmbedResult:
        stored = await self.store.get(self.model_id, image_id)
        self.metrics.cache.labels("redis", "hit" if stored else "miss").inc()
        if stored is not None:
            return EmbedResult(image_id, True, stored.original_size, 0.0)
        work = functools.partial(self._encode_and_store, image_id, data, deadline)
        if self.lease is None:
            return await work()

        async def lookup() -> EmbedResult | None:
            found = await self.store.get(self.model_id, image_id)
            return None if found is None else EmbedResult(image_id, True, found.original_size, 0.0)

        result, outcome = await self.lease.run(image_id, work, lookup, deadline)
        self.metrics.lease.labels("held" if outcome.held else "waited").inc()
        return result

    async def _encode_and_store(
        self, image_id: str, data: bytes, deadline: float | None
    ) -> EmbedResult:
        image = await self._decode(data)
        input_image = await asyncio.to_thread(self.family.encoder_input, image)
        start = time.perf_counter()
        async with self._encodes.admit():
            features = await self._encode(input_image, deadline)
        elapsed = time.perf_counter() - start
        original_size = (int(image.shape[0]), int(image.shape[1]))
        emb: Embedding = self.family.embedding(features, original_size, input_image)
        await self.store.put(self.model_id, image_id, emb)
        return EmbedResult(image_id, False, original_size, elapsed)

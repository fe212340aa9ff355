"""The embedding service's logic: hash, look up, decode, encode once, store."""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass

import numpy as np

from samserve.core import amg, keys
from samserve.core.coalesce import SingleFlight
from samserve.core.encoder import Encoder, make_embedding, resize_for_encoder
from samserve.core.errors import InvalidInput, NotFound, ResourceExhausted
from samserve.core.images import content_hash, decode_image
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


class Embedder:
    """Embeds images for one model.

    Args:
        variant: the model variant this service runs (requests naming another are rejected).
        model_id: identity used in cache keys.
        encoder: the image encoder (in-process or Triton).
        store: where embeddings are kept.
        metrics: metrics sink.
        max_image_bytes: largest accepted upload.
        max_pixels: largest accepted decoded image.
    """

    def __init__(
        self,
        *,
        variant: str,
        model_id: str,
        encoder: Encoder,
        store: EmbeddingStore,
        metrics: Metrics,
        max_image_bytes: int,
        max_pixels: int,
    ) -> None:
        self.variant = variant
        self.model_id = model_id
        self.encoder = encoder
        self.store = store
        self.metrics = metrics
        self.max_image_bytes = max_image_bytes
        self.max_pixels = max_pixels
        self._flight: SingleFlight[EmbedResult] = SingleFlight()
        self._crop_flight: SingleFlight[bool] = SingleFlight()

    def check_model(self, model: str) -> None:
        """Reject a request that names a model this service does not run."""
        check_requested_model(model, self.variant, self.model_id)

    async def embed(self, data: bytes, model: str = "") -> EmbedResult:
        """Store the embedding of encoded image ``data`` unless it is stored already."""
        self.check_model(model)
        if len(data) > self.max_image_bytes:
            raise ResourceExhausted(
                f"image: {len(data)} bytes is over the limit of {self.max_image_bytes}"
            )
        if not data:
            raise InvalidInput("image: empty")
        image_id = content_hash(data)
        result, shared = await self._flight.run(image_id, lambda: self._embed(image_id, data))
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
        self, data: bytes, crop_n_layers: int, crop_overlap_ratio: float, model: str = ""
    ) -> CropsResult:
        """Store the whole-image embedding of ``data`` and every crop embedding that
        segment-everything needs for these crop parameters (crops already stored are skipped).

        Each crop is cut, resized and encoded exactly as ``SamAutomaticMaskGenerator._process_crop``
        does with ``SamPredictor.set_image(image[y0:y1, x0:x1])``, and stored under
        :func:`keys.crop_id`. The first crop box is the whole image: its embedding is the
        whole-image one.
        """
        amg.validate_crop_params(crop_n_layers, crop_overlap_ratio)
        whole = await self.embed(data, model)
        boxes, _ = amg.crop_boxes(whole.original_size, crop_n_layers, crop_overlap_ratio)
        h, w = whole.original_size
        image: np.ndarray | None = None
        encoded = 0
        for box in boxes:
            if box == [0, 0, w, h]:
                continue
            cid = keys.crop_id(whole.image_id, box)
            if await self.store.get(self.model_id, cid) is not None:
                continue
            if image is None:
                image = await asyncio.to_thread(decode_image, data, max_pixels=self.max_pixels)
            ran, shared = await self._crop_flight.run(
                cid, functools.partial(self._embed_crop, image, box, cid)
            )
            encoded += int(ran and not shared)
        return CropsResult(whole.image_id, whole.original_size, len(boxes), encoded)

    async def _embed_crop(self, image: np.ndarray, box: list[int], cid: str) -> bool:
        if await self.store.get(self.model_id, cid) is not None:
            return False
        x0, y0, x1, y1 = box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1, :])
        input_image = await asyncio.to_thread(resize_for_encoder, crop)
        start = time.perf_counter()
        features = await self.encoder.encode(input_image)
        self.metrics.encoder_seconds.observe(time.perf_counter() - start)
        size = (int(crop.shape[0]), int(crop.shape[1]))
        await self.store.put(self.model_id, cid, make_embedding(features, size, input_image))
        return True

    async def _embed(self, image_id: str, data: bytes) -> EmbedResult:
        stored = await self.store.get(self.model_id, image_id)
        self.metrics.cache.labels("redis", "hit" if stored else "miss").inc()
        if stored is not None:
            return EmbedResult(image_id, True, stored.original_size, 0.0)
        image, input_image = await asyncio.to_thread(self._prepare, data)
        start = time.perf_counter()
        features = await self.encoder.encode(input_image)
        elapsed = time.perf_counter() - start
        self.metrics.encoder_seconds.observe(elapsed)
        original_size = (int(image.shape[0]), int(image.shape[1]))
        emb: Embedding = make_embedding(features, original_size, input_image)
        await self.store.put(self.model_id, image_id, emb)
        return EmbedResult(image_id, False, original_size, elapsed)

    def _prepare(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        image = decode_image(data, max_pixels=self.max_pixels)
        return image, resize_for_encoder(image)

"""The decoder service's logic: SamPredictor.predict semantics over stored embeddings.

For one prompt this runs exactly what ``SamPredictor.predict`` runs (the official
``ResizeLongestSide`` coordinate transform, prompt encoder, mask decoder and
``Sam.postprocess_masks``), so results equal the reference for the same embedding. The
dense positional encoding is computed once per model, and the prompt-independent part of
the mask decoder once per image (``core/prefix.py``), instead of once per call.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from samserve.core import amg, keys
from samserve.core.errors import InvalidInput, NotFound, ResourceExhausted
from samserve.core.masks import Polygon, encode_coco_rle, encode_polygons, pack_bitmask
from samserve.core.metrics import Metrics
from samserve.core.models import check_requested_model
from samserve.core.prefix import ReadyEmbedding, prepare
from samserve.core.prefix import decode as prefix_decode
from samserve.core.store import EmbeddingStore, LruCache

LOW_RES = 256


class MaskEncoding(Enum):
    """How masks leave the service."""

    BITMASK = "bitmask"
    COCO_RLE = "coco_rle"
    POLYGON = "polygon"


@dataclass(frozen=True, slots=True)
class PromptSpec:
    """One prompt, already parsed from the wire (validated by :func:`validate_prompt`).

    Attributes:
        points: (N, 2) float (x, y) pixels in the original image, or None.
        labels: (N,) int, 1 foreground / 0 background, or None.
        box: (4,) float XYXY pixels, or None.
        mask_input: (1, 256, 256) float32 logits, or None.
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_input: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class Prediction:
    """Masks for one prompt: bool (K, H, W), float32 scores (K,), float32 logits (K, 256, 256)."""

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray


@dataclass(frozen=True, slots=True)
class EncodedPrediction:
    """A prediction with its masks encoded for the wire (bytes, or polygons for POLYGON)."""

    masks: list[bytes] | list[list[Polygon]]
    scores: np.ndarray
    low_res_logits: np.ndarray | None


def validate_prompt(p: PromptSpec, index: int, max_points: int) -> None:
    """Check one prompt the way the reference would need it, with messages naming the field.

    Raises:
        InvalidInput: empty prompt, mismatched points/labels, bad labels, NaN or infinite
            coordinates, malformed box or mask input.
        ResourceExhausted: more than ``max_points`` points.
    """
    where = f"prompts[{index}]"
    if p.points is None and p.box is None and p.mask_input is None:
        raise InvalidInput(f"{where}: empty prompt (give points, a box or a mask_input)")
    if p.points is not None:
        if p.points.ndim != 2 or p.points.shape[1] != 2:
            raise InvalidInput(f"{where}.points: expected (N, 2), got {p.points.shape}")
        if p.labels is None or p.labels.shape != (p.points.shape[0],):
            n_labels = 0 if p.labels is None else p.labels.size
            raise InvalidInput(f"{where}: {p.points.shape[0]} points but {n_labels} labels")
        if len(p.points) > max_points:
            raise ResourceExhausted(f"{where}.points: {len(p.points)} is over {max_points}")
        if not np.isfinite(p.points).all():
            raise InvalidInput(f"{where}.points: coordinates must be finite (no NaN or inf)")
        if not np.isin(p.labels, (0, 1)).all():
            raise InvalidInput(f"{where}.points.label: must be 1 (foreground) or 0 (background)")
    if p.box is not None:
        if p.box.shape != (4,) or not np.isfinite(p.box).all():
            raise InvalidInput(f"{where}.box: expected 4 finite numbers")
        if p.box[2] < p.box[0] or p.box[3] < p.box[1]:
            raise InvalidInput(f"{where}.box: expected x0 <= x1 and y0 <= y1")
    if p.mask_input is not None:
        if p.mask_input.shape != (1, LOW_RES, LOW_RES):
            raise InvalidInput(
                f"{where}.mask_input: expected (1, 256, 256), got {p.mask_input.shape}"
            )
        if not np.isfinite(p.mask_input).all():
            raise InvalidInput(f"{where}.mask_input: values must be finite")


def encode_prediction(
    pred: Prediction, encoding: MaskEncoding, return_low_res_logits: bool
) -> EncodedPrediction:
    """Encode a prediction's masks for the wire (and keep its logits when asked)."""
    masks: list[bytes] | list[list[Polygon]]
    if encoding is MaskEncoding.COCO_RLE:
        masks = encode_coco_rle(pred.masks)
    elif encoding is MaskEncoding.POLYGON:
        masks = [encode_polygons(m) for m in pred.masks]
    else:
        masks = [pack_bitmask(m) for m in pred.masks]
    logits = pred.low_res_logits if return_low_res_logits else None
    return EncodedPrediction(masks, pred.scores, logits)


def predict(
    sam: Sam,
    dense_pe: torch.Tensor,
    loaded: ReadyEmbedding,
    prompt: PromptSpec,
    multimask_output: bool,
) -> Prediction:
    """``SamPredictor.predict`` for one prompt over a loaded embedding."""
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    points = None
    if prompt.points is not None and prompt.labels is not None:
        coords = transform.apply_coords(prompt.points.astype(np.float64), loaded.original_size)
        points = (
            torch.as_tensor(coords, dtype=torch.float)[None, :, :],
            torch.as_tensor(prompt.labels, dtype=torch.int)[None, :],
        )
    boxes = None
    if prompt.box is not None:
        box = transform.apply_boxes(prompt.box.astype(np.float64), loaded.original_size)
        boxes = torch.as_tensor(box, dtype=torch.float)[None, :]
    masks_in = None
    if prompt.mask_input is not None:
        masks_in = torch.as_tensor(prompt.mask_input, dtype=torch.float)[None, :, :, :]
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=masks_in)
        if masks_in is None:
            low_res, iou = prefix_decode(sam, loaded.prefix, sparse, multimask_output)
        else:  # a mask input changes the dense embedding: the official path
            low_res, iou = sam.mask_decoder(
                image_embeddings=loaded.features,
                image_pe=dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
        masks = sam.postprocess_masks(low_res, loaded.input_size, loaded.original_size)
        masks = masks > sam.mask_threshold
    return Prediction(
        masks=masks[0].numpy(), scores=iou[0].numpy(), low_res_logits=low_res[0].numpy()
    )


class Decoder:
    """Answers prompt queries for one model from stored embeddings.

    Args:
        variant: the model variant served.
        model_id: identity used in cache keys.
        sam: the model (only its prompt encoder and mask decoder run here).
        store: the shared embedding store.
        metrics: metrics sink.
        lru_entries: embeddings kept decoded in process (about 14 MiB each).
        max_prompts: most prompts in one request.
        max_points: most points in one prompt.
        workers: threads running the decoder.
    """

    def __init__(
        self,
        *,
        variant: str,
        model_id: str,
        sam: Sam,
        store: EmbeddingStore,
        metrics: Metrics,
        lru_entries: int = 32,
        max_prompts: int = 64,
        max_points: int = 64,
        workers: int = 2,
    ) -> None:
        self.variant = variant
        self.model_id = model_id
        self.sam = sam
        self.store = store
        self.metrics = metrics
        self.max_prompts = max_prompts
        self.max_points = max_points
        self._lru: LruCache[str, ReadyEmbedding] = LruCache(lru_entries)
        with torch.inference_mode():
            self._dense_pe = sam.prompt_encoder.get_dense_pe()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decoder")

    def check_model(self, model: str) -> None:
        """Reject a request that names a model this service does not run."""
        check_requested_model(model, self.variant, self.model_id)

    async def load(self, image_id: str) -> ReadyEmbedding:
        """The embedding of ``image_id``, from the LRU or Redis.

        Raises:
            InvalidInput: ``image_id`` is not a hex sha256.
            NotFound: nothing stored for it under this model.
            Unavailable: Redis unreachable.
        """
        if not keys.is_image_id(image_id):
            raise InvalidInput("image_id: expected a lowercase hex sha256 (64 characters)")
        loaded = await self._load_stored(image_id)
        if loaded is None:
            raise NotFound(f"image_id: no embedding stored for {image_id} under {self.model_id}")
        return loaded

    async def _load_stored(self, image_id: str) -> ReadyEmbedding | None:
        key = keys.embedding_key(self.model_id, image_id)
        loaded = self._lru.get(key)
        self.metrics.cache.labels("lru", "hit" if loaded is not None else "miss").inc()
        if loaded is not None:
            return loaded
        emb = await self.store.get(self.model_id, image_id)
        self.metrics.cache.labels("redis", "hit" if emb is not None else "miss").inc()
        if emb is None:
            return None
        loop = asyncio.get_running_loop()
        fresh = await loop.run_in_executor(
            self._pool,
            prepare,
            self.sam,
            self._dense_pe,
            emb.features,
            emb.original_size,
            emb.input_size,
        )
        self._lru.put(key, fresh)
        return fresh

    async def segment(
        self,
        image_id: str,
        prompts: list[PromptSpec],
        *,
        model: str = "",
        multimask_output: bool = True,
        encoding: MaskEncoding = MaskEncoding.BITMASK,
        return_low_res_logits: bool = False,
    ) -> tuple[tuple[int, int], list[EncodedPrediction]]:
        """Run every prompt against the stored embedding of ``image_id``.

        Returns:
            The original (H, W) and one encoded prediction per prompt, in order.
        """
        self.check_model(model)
        if not prompts:
            raise InvalidInput("prompts: at least one prompt is required")
        if len(prompts) > self.max_prompts:
            raise ResourceExhausted(f"prompts: {len(prompts)} is over {self.max_prompts}")
        for i, p in enumerate(prompts):
            validate_prompt(p, i, self.max_points)
        loaded = await self.load(image_id)
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        out = await loop.run_in_executor(
            self._pool,
            self._run,
            loaded,
            prompts,
            multimask_output,
            encoding,
            return_low_res_logits,
        )
        self.metrics.decoder_seconds.observe(time.perf_counter() - start)
        return loaded.original_size, out

    async def predict(
        self, loaded: ReadyEmbedding, prompt: PromptSpec, multimask_output: bool
    ) -> Prediction:
        """One validated prompt against a ready embedding, on the decoder threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, predict, self.sam, self._dense_pe, loaded, prompt, multimask_output
        )

    def _run(
        self,
        loaded: ReadyEmbedding,
        prompts: list[PromptSpec],
        multimask_output: bool,
        encoding: MaskEncoding,
        return_low_res_logits: bool,
    ) -> list[EncodedPrediction]:
        out = []
        for p in prompts:
            pred = predict(self.sam, self._dense_pe, loaded, p, multimask_output)
            out.append(encode_prediction(pred, encoding, return_low_res_logits))
        return out

    async def segment_everything(
        self, image_id: str, params: amg.AmgParams, *, model: str = ""
    ) -> tuple[tuple[int, int], list[amg.AmgRecord]]:
        """``SamAutomaticMaskGenerator(**params).generate`` on the stored image ``image_id``.

        Returns:
            The original (H, W) and the records in ``generate()`` order.

        Raises:
            InvalidInput: a bad parameter or image id.
            ResourceExhausted: parameters over the service limits.
            NotFound: the image, or one of its crops (``crop_n_layers >= 1``; EmbedCrops stores
                them), has no stored embedding.
        """
        self.check_model(model)
        params.validate()
        whole = await self.load(image_id)
        boxes, layers = amg.crop_boxes(
            whole.original_size, params.crop_n_layers, params.crop_overlap_ratio
        )
        crops: list[tuple[list[int], int, ReadyEmbedding]] = []
        missing = 0
        for box, layer in zip(boxes, layers, strict=True):
            full = box == [0, 0, whole.original_size[1], whole.original_size[0]]
            loaded = whole if full else await self._load_stored(keys.crop_id(image_id, box))
            if loaded is None:
                missing += 1
                continue
            crops.append((box, layer, loaded))
        if missing:
            raise NotFound(
                f"image_id: {missing} of {len(boxes)} crop embeddings of {image_id} are not "
                "stored (EmbedCrops stores them)"
            )
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        records = await loop.run_in_executor(
            self._pool, amg.generate, self.sam, params, whole.original_size, crops
        )
        self.metrics.decoder_seconds.observe(time.perf_counter() - start)
        return whole.original_size, records

    def refine_session(self) -> RefineSession:
        """A new interactive refinement session (one per Refine stream)."""
        return RefineSession(self)

    async def close(self) -> None:
        """Stop the decoder threads."""
        self._pool.shutdown(wait=True)


class RefineSession:
    """Interactive refinement on one image, as the official demo chains ``SamPredictor.predict``.

    Each :meth:`step` adds a click (or sets the box) and predicts with every click so far, the
    current box and, after the first step, the previous step's best low-resolution logits
    (highest score) as ``mask_input``.
    """

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.image_id = ""
        self.steps = 0
        self._points: list[tuple[float, float]] = []
        self._labels: list[int] = []
        self._box: np.ndarray | None = None
        self._logits: np.ndarray | None = None

    def reset(self) -> None:
        """Forget clicks, box and logits."""
        self.steps = 0
        self._points, self._labels, self._box, self._logits = [], [], None, None

    async def step(
        self,
        image_id: str,
        *,
        point: tuple[float, float, int] | None = None,
        box: np.ndarray | None = None,
        model: str = "",
        multimask_output: bool = False,
        encoding: MaskEncoding = MaskEncoding.BITMASK,
        return_low_res_logits: bool = False,
        reset: bool = False,
    ) -> tuple[tuple[int, int], EncodedPrediction]:
        """Apply one click (x, y, label) and/or box, and predict.

        Raises:
            InvalidInput: no image yet, a step with neither a point nor a box, a bad point/box.
            NotFound: no embedding stored for the image.
        """
        self.decoder.check_model(model)
        if reset or (image_id and image_id != self.image_id):
            self.reset()
            self.image_id = image_id or self.image_id
        if not self.image_id:
            raise InvalidInput("image_id: the first request of a session must name the image")
        if point is None and box is None:
            raise InvalidInput("a refinement step needs a point or a box")
        points = self._points + ([point[:2]] if point is not None else [])
        labels = self._labels + ([point[2]] if point is not None else [])
        prompt = PromptSpec(
            points=np.array(points, dtype=np.float64).reshape(-1, 2) if points else None,
            labels=np.array(labels, dtype=np.int64) if points else None,
            box=box if box is not None else self._box,
            mask_input=None if self._logits is None else self._logits[None],
        )
        validate_prompt(prompt, 0, self.decoder.max_points)
        loaded = await self.decoder.load(self.image_id)
        pred = await self.decoder.predict(loaded, prompt, multimask_output)
        self._points, self._labels, self._box = points, labels, prompt.box
        self._logits = pred.low_res_logits[int(np.argmax(pred.scores))]
        self.steps += 1
        return loaded.original_size, encode_prediction(pred, encoding, return_low_res_logits)

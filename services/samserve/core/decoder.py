"""The decoder service's logic: SamPredictor.predict semantics over stored embeddings.

For one prompt this runs exactly what ``SamPredictor.predict`` runs (the official
``ResizeLongestSide`` coordinate transform, prompt encoder, mask decoder and
``Sam.postprocess_masks``), so results equal the reference for the same embedding. The
dense positional encoding is computed once per model, and the prompt-independent part of
the mask decoder once per image (``core/prefix.py``), instead of once per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from samserve.core import amg, keys
from samserve.core.admission import Lane
from samserve.core.coalesce import SingleFlight
from samserve.core.decoder_runtime import PrefixDecode, make_runtime, runtime_name, torch_runtime
from samserve.core.errors import InvalidInput, NotFound, ResourceExhausted, Unavailable
from samserve.core.fullres import Cancel, upscaled
from samserve.core.masks import Polygon, encode_coco_rle, encode_polygons, pack_bitmask
from samserve.core.metrics import Metrics
from samserve.core.models import check_requested_model
from samserve.core.prefix import ReadyEmbedding, prepare
from samserve.core.store import Embedding, EmbeddingStore, LruCache

LOW_RES = 256
#: Default memory budget of one job's full-resolution work, bytes.
DEFAULT_WORK_BYTES = 256 * 1024 * 1024
#: How often an entry answered from the LRU has its Redis TTL started again, seconds.
TOUCH_INTERVAL_S = 60.0

T = TypeVar("T")


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

    def nbytes(self) -> int:
        """About what this prediction takes in a response."""
        size = sum(
            len(m) if isinstance(m, bytes) else sum(p.xy.size * 4 for p in m) for m in self.masks
        )
        return size + (0 if self.low_res_logits is None else self.low_res_logits.nbytes)


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
    work_bytes: int = DEFAULT_WORK_BYTES,
    runtime: PrefixDecode | None = None,
) -> Prediction:
    """``SamPredictor.predict`` for one prompt over a loaded embedding (masks upsampled a few
    at a time, within ``work_bytes``; the mask decoder on ``runtime``, torch by default)."""
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
        if masks_in is None and loaded.prefix is not None:
            run = runtime or torch_runtime(sam)
            low_res, iou = run(loaded.prefix, sparse, multimask_output)
        else:  # a mask input changes the dense embedding: the official path
            low_res, iou = sam.mask_decoder(
                image_embeddings=loaded.features,
                image_pe=dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
        h, w = loaded.original_size
        masks = np.empty((low_res.shape[1], h, w), dtype=bool)
        pieces = upscaled(sam, low_res[0], loaded.input_size, loaded.original_size, work_bytes)
        for start, logits in pieces:  # thresholded straight into the answer's array
            torch.gt(
                logits, sam.mask_threshold, out=torch.from_numpy(masks[start : start + len(logits)])
            )
    return Prediction(masks=masks, scores=iou[0].numpy(), low_res_logits=low_res[0].numpy())


def response_bytes(
    prompts: int, masks_per_prompt: int, size: tuple[int, int], return_low_res_logits: bool
) -> int:
    """Bytes of a Segment answer with packed-bitmask masks (the logits are float32)."""
    per_mask = (size[0] * size[1] + 7) // 8
    if return_low_res_logits:
        per_mask += LOW_RES * LOW_RES * 4
    return prompts * masks_per_prompt * per_mask


class Decoder:
    """Answers prompt queries for one model from stored embeddings.

    Work runs on ``workers`` threads behind two admission lanes: ``prompts`` (Segment and
    Refine steps, cost = prompts; at most ``max_queued_prompts`` waiting) and ``everything``
    (one segment-everything generation at a time, at most ``max_queued_everything`` waiting,
    whose batches then take prompt slots in turn so they never starve interactive calls).

    Args:
        variant: the model variant served.
        model_id: identity used in cache keys.
        sam: the model (only its prompt encoder and mask decoder run here).
        store: the shared embedding store.
        metrics: metrics sink.
        lru_entries: embeddings kept ready in process (about 14 MiB each).
        max_prompts: most prompts in one request.
        max_points: most points in one prompt.
        workers: threads running the decoder (prompts decoded at once).
        intra_op_threads: torch intra-op threads of each worker (set per thread: the rest of
            the process, e.g. an in-process encoder, keeps its own); 0: adaptive, ``cpus``
            divided by the calls running at that moment (a lone call gets every CPU, a full
            pool one thread per call).
        cpus: CPUs the adaptive choice shares out.
        runtime: the mask decoder's runtime, ``torch``, ``onnxruntime`` or ``auto``
            (``core/decoder_runtime.py``); SAM 2 models always run torch.
        work_bytes: memory budget of one job's full-resolution work.
        max_response_bytes: largest Segment answer.
        max_queued_prompts: prompts allowed to wait for a worker.
        max_queued_everything: segment-everything calls allowed to wait for their turn.
        max_everything_work: largest segment-everything work (see :func:`amg.check_work`).
        queue_full_wait: seconds a call that finds the prompt queue full waits for room.
        max_queue_seconds: longest expected wait for a decoder thread before a refusal.
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
        intra_op_threads: int = 0,
        cpus: int = 1,
        work_bytes: int = DEFAULT_WORK_BYTES,
        max_response_bytes: int = 64 * 1024 * 1024,
        max_queued_prompts: int = 16,
        max_queued_everything: int = 1,
        max_everything_work: int = 2 * 10**11,
        queue_full_wait: float = 0.0,
        max_queue_seconds: float = float("inf"),
        runtime: str = "torch",
    ) -> None:
        self.variant = variant
        self.model_id = model_id
        self.sam = sam
        self.store = store
        self.metrics = metrics
        self.max_prompts = max_prompts
        self.max_points = max_points
        self.work_bytes = work_bytes
        self.max_response_bytes = max_response_bytes
        self.max_everything_work = max_everything_work
        self._lru: LruCache[str, ReadyEmbedding] = LruCache(lru_entries)
        self._loads: SingleFlight[ReadyEmbedding | None] = SingleFlight()
        self._touched: dict[str, float] = {}
        with torch.inference_mode():
            self._dense_pe = self._make_dense_pe()
        self.runtime = self._make_runtime(runtime)
        self.workers = workers
        self.intra_op_threads = intra_op_threads
        self.cpus = max(1, cpus)
        self._running = 0
        self._running_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="decoder",
            initializer=torch.set_num_threads,
            initargs=(intra_op_threads or 1,),
        )
        self.prompts = Lane(
            "decoder",
            workers,
            max_queued_prompts,
            metrics,
            overflow_wait=queue_full_wait,
            max_wait=max_queue_seconds,
        )
        self.everything = Lane("everything", 1, max_queued_everything, metrics)

    def check_model(self, model: str) -> None:
        """Reject a request that names a model this service does not run."""
        check_requested_model(model, self.variant, self.model_id)

    async def load(self, image_id: str) -> ReadyEmbedding:
        """The embedding of ``image_id``, from the LRU or Redis.

        Raises:
            InvalidInput: ``image_id`` is not a hex sha256.
            NotFound: nothing stored for it under this model.
            Unavailable: Redis unreachable (and the embedding not in the LRU).
        """
        if not keys.is_image_id(image_id):
            raise InvalidInput("image_id: expected a lowercase hex sha256 (64 characters)")
        loaded = await self._load_stored(image_id)
        if loaded is None:
            raise NotFound(f"image_id: no embedding stored for {image_id} under {self.model_id}")
        return loaded

    async def _load_stored(self, store_id: str) -> ReadyEmbedding | None:
        """From the LRU, else from Redis; concurrent misses of one entry share one GET and one
        prefix build."""
        key = keys.embedding_key(self.model_id, store_id)
        loaded = self._lru.get(key)
        self.metrics.cache.labels("lru", "hit" if loaded is not None else "miss").inc()
        if loaded is not None:
            await self._touch(key, store_id)
            return loaded
        result, _ = await self._loads.run(key, lambda: self._fetch(key, store_id))
        return result

    async def _fetch(self, key: str, store_id: str) -> ReadyEmbedding | None:
        emb = await self.store.get(self.model_id, store_id)
        self.metrics.cache.labels("redis", "hit" if emb is not None else "miss").inc()
        if emb is None:
            return None
        loop = asyncio.get_running_loop()
        fresh = await loop.run_in_executor(self._pool, self._prepare, emb)
        self._lru.put(key, fresh)
        self._touched[key] = time.monotonic()
        return fresh

    async def _touch(self, key: str, store_id: str) -> None:
        """Keep an entry the LRU answers from alive in Redis too (at most once a minute)."""
        now = time.monotonic()
        if now - self._touched.get(key, 0.0) < TOUCH_INTERVAL_S:
            return
        self._touched[key] = now
        if len(self._touched) > 4 * max(self._lru.capacity, 1):
            self._touched = {k: t for k, t in self._touched.items() if now - t < TOUCH_INTERVAL_S}
        with contextlib.suppress(Unavailable):  # the LRU still answers while Redis is away
            await self.store.touch(self.model_id, store_id)

    async def _in_pool(
        self, fn: Callable[..., T], *args: Any, cost: int = 1, bounded: bool = True
    ) -> T:
        """Run ``fn(*args, cancel)`` on a decoder thread once the prompt lane admits it; if the
        caller leaves, ``cancel`` tells the thread to stop at its next piece."""
        cancel = Cancel()
        async with self.prompts.admit(cost, bounded=bounded):
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(
                    self._pool, functools.partial(self._threaded, fn, *args, cancel)
                )
            except asyncio.CancelledError:
                cancel.set()
                raise

    def _threaded(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on this worker thread, with adaptive intra-op threads when asked."""
        if self.intra_op_threads > 0:
            return fn(*args)
        with self._running_lock:
            self._running += 1
            threads = max(1, self.cpus // self._running)
        try:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            return fn(*args)
        finally:
            with self._running_lock:
                self._running -= 1

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

        Raises:
            ResourceExhausted: too many prompts or points, an answer over the response limit
                (refused before any work for packed bitmasks, as soon as it is known for other
                encodings), or the prompt lane's queue is full (:class:`Overloaded`).
        """
        self.check_model(model)
        if not prompts:
            raise InvalidInput("prompts: at least one prompt is required")
        if len(prompts) > self.max_prompts:
            raise ResourceExhausted(f"prompts: {len(prompts)} is over {self.max_prompts}")
        for i, p in enumerate(prompts):
            validate_prompt(p, i, self.max_points)
        loaded = await self.load(image_id)
        if encoding is MaskEncoding.BITMASK:
            self._check_response(
                response_bytes(
                    len(prompts), 3 if multimask_output else 1, loaded.original_size,
                    return_low_res_logits,
                )
            )  # fmt: skip
        start = time.perf_counter()
        out = await self._in_pool(
            self._run,
            loaded,
            prompts,
            multimask_output,
            encoding,
            return_low_res_logits,
            cost=len(prompts),
        )
        self.metrics.decoder_seconds.observe(time.perf_counter() - start)
        return loaded.original_size, out

    def _check_response(self, size: int) -> None:
        if size > self.max_response_bytes:
            raise ResourceExhausted(
                f"prompts: the answer would be {size} bytes, over the limit of "
                f"{self.max_response_bytes} (fewer prompts, single-mask output, no logits, or "
                "a compact mask_encoding)"
            )

    async def predict(
        self, loaded: ReadyEmbedding, prompt: PromptSpec, multimask_output: bool
    ) -> Prediction:
        """One validated prompt against a ready embedding, on the decoder threads."""
        return await self._in_pool(self._predict_one, loaded, prompt, multimask_output)

    def _predict_one(
        self, loaded: ReadyEmbedding, prompt: PromptSpec, multimask_output: bool, cancel: Cancel
    ) -> Prediction:
        return self._predict(loaded, prompt, multimask_output)

    # The model family's parts (``core/sam2/decoder.py`` overrides them for SAM 2).
    #: What SegmentEverything's parameters are (their names and defaults).
    amg_params_type: type[amg.AmgParams] = amg.AmgParams

    def _make_dense_pe(self) -> torch.Tensor:
        """The prompt encoder's dense positional encoding (once per model)."""
        dense_pe: torch.Tensor = self.sam.prompt_encoder.get_dense_pe()
        return dense_pe

    def _make_runtime(self, runtime: str) -> PrefixDecode:
        """The mask decoder's runtime (once per model)."""
        return make_runtime(self.sam, runtime, self.model_id)

    @property
    def runtime_label(self) -> str:
        """Where the mask decoder runs: ``onnxruntime`` or ``torch``."""
        return runtime_name(self.runtime)

    def _prepare(self, emb: Embedding) -> ReadyEmbedding:
        """A stored entry made ready for decoding (on a decoder thread)."""
        return prepare(self.sam, self._dense_pe, emb.features, emb.original_size, emb.input_size)

    def _predict(
        self, loaded: ReadyEmbedding, prompt: PromptSpec, multimask_output: bool
    ) -> Prediction:
        """One validated prompt: ``SamPredictor.predict``."""
        return predict(
            self.sam, self._dense_pe, loaded, prompt, multimask_output, self.work_bytes,
            self.runtime,
        )  # fmt: skip

    def _everything_run(
        self,
        params: amg.AmgParams,
        original_size: tuple[int, int],
        crops: list[tuple[list[int], int, ReadyEmbedding]],
    ) -> amg.EverythingRun:
        """One segment-everything generation: ``SamAutomaticMaskGenerator.generate``."""
        return amg.EverythingRun(
            self.sam, params, original_size, crops, self.work_bytes, self.runtime
        )

    def _run(
        self,
        loaded: ReadyEmbedding,
        prompts: list[PromptSpec],
        multimask_output: bool,
        encoding: MaskEncoding,
        return_low_res_logits: bool,
        cancel: Cancel,
    ) -> list[EncodedPrediction]:
        out = []
        size = 0
        for p in prompts:
            cancel.check()
            pred = self._predict(loaded, p, multimask_output)
            encoded = encode_prediction(pred, encoding, return_low_res_logits)
            size += encoded.nbytes()
            self._check_response(size)
            out.append(encoded)
        return out

    async def segment_everything(
        self, image_id: str, params: amg.AmgParams, *, model: str = ""
    ) -> tuple[tuple[int, int], list[amg.AmgRecord]]:
        """``SamAutomaticMaskGenerator(**params).generate`` on the stored image ``image_id``.

        The generation runs as a sequence of jobs (one batch of grid points, or one crop's NMS,
        each within ``work_bytes``); it stops between jobs, and inside a job between pieces, when
        the caller cancels or its deadline passes.

        Returns:
            The original (H, W) and the records in ``generate()`` order.

        Raises:
            InvalidInput: a bad parameter or image id.
            ResourceExhausted: parameters or work over the service limits, or another
                generation already waiting (:class:`Overloaded`).
            NotFound: the image, or one of its crops (``crop_n_layers >= 1``; EmbedCrops stores
                them), has no stored embedding.
        """
        self.check_model(model)
        params.validate()
        whole = await self.load(image_id)
        boxes, layers = amg.crop_boxes(
            whole.original_size, params.crop_n_layers, params.crop_overlap_ratio
        )
        amg.check_work(params, boxes, layers, self.max_everything_work)
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
        start = time.perf_counter()
        async with self.everything.admit():
            run = self._everything_run(params, whole.original_size, crops)
            for stage in run.jobs():  # a stage's pieces, as many at once as there are workers
                for i in range(0, len(stage), self.workers):
                    window = stage[i : i + self.workers]
                    await asyncio.gather(*(self._in_pool(job, bounded=False) for job in window))
            records = await self._in_pool(run.finish, bounded=False)
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

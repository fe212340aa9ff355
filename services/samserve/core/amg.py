"""Segment everything == ``SamAutomaticMaskGenerator.generate`` over stored embeddings.

This mirrors the official ``_generate_masks``, ``_process_crop``, ``_process_batch`` and
``postprocess_small_regions`` step by step with the official ``segment_anything.utils.amg``
helpers and torchvision's ``batched_nms``; only ``SamPredictor.set_image``/``predict_torch`` are
replaced by a batched decode on a stored embedding (one per crop, see
docs/segment-everything.md). Parameters are checked explicitly (never by ``assert``), and an
image where no crop yields a mask answers an empty list (the official code raises IndexError).

Memory stays bounded whatever the image size, with the official answer unchanged: a batch is
filtered on predicted IoU before anything is upsampled (the official filter, moved earlier), then
upsampled and encoded a few masks at a time (``core/fullres.py``), each mask kept only as a
compact RLE; small-region postprocessing handles one mask at a time. A generation is a sequence of
jobs (:class:`EverythingRun`), so the caller runs them on its worker threads (the grid's pieces at
once) and stops between them when its own caller has gone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    MaskData,
    area_from_rle,
    batch_iterator,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from segment_anything.utils.transforms import ResizeLongestSide
from torch import Tensor
from torchvision.ops.boxes import batched_nms, box_area

from samserve.core.decoder_runtime import PrefixDecode, torch_runtime
from samserve.core.errors import InvalidInput, ResourceExhausted
from samserve.core.fullres import Cancel, upscaled
from samserve.core.prefix import ReadyEmbedding

OUTPUT_MODES = ("binary_mask", "coco_rle")
#: Most crop layers accepted (layer i has 4**i crops, each one encoder run).
MAX_CROP_LAYERS = 3
#: Most grid points per side accepted (each point decodes three masks).
MAX_POINTS_PER_SIDE = 128
#: Most points decoded together (each holds three 1024x1024 float logit maps while upscaling).
MAX_POINTS_PER_BATCH = 256


@dataclass(frozen=True, slots=True)
class AmgParams:
    """``SamAutomaticMaskGenerator``'s parameters, same names and defaults."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"

    def validate(self) -> None:
        """Check every parameter, naming the field.

        Raises:
            InvalidInput: a value out of its range or not finite, an unknown output_mode.
            ResourceExhausted: a grid, batch or crop count over the service limits.
        """
        if self.points_per_side < 1:
            raise InvalidInput("points_per_side: must be at least 1")
        if self.points_per_side > MAX_POINTS_PER_SIDE:
            raise ResourceExhausted(f"points_per_side: over the limit of {MAX_POINTS_PER_SIDE}")
        if self.points_per_batch < 1:
            raise InvalidInput("points_per_batch: must be at least 1")
        if self.points_per_batch > MAX_POINTS_PER_BATCH:
            raise ResourceExhausted(f"points_per_batch: over the limit of {MAX_POINTS_PER_BATCH}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh"):
            _check_unit(name, getattr(self, name))
        _check_unit("crop_nms_thresh", self.crop_nms_thresh)
        if not math.isfinite(self.stability_score_offset):
            raise InvalidInput("stability_score_offset: must be finite")
        if self.crop_n_layers < 0:
            raise InvalidInput("crop_n_layers: must be 0 or more")
        if self.crop_n_layers > MAX_CROP_LAYERS:
            raise ResourceExhausted(f"crop_n_layers: over the limit of {MAX_CROP_LAYERS}")
        if not (math.isfinite(self.crop_overlap_ratio) and 0.0 <= self.crop_overlap_ratio < 1.0):
            raise InvalidInput("crop_overlap_ratio: must be in [0, 1)")
        if self.crop_n_points_downscale_factor < 1:
            raise InvalidInput("crop_n_points_downscale_factor: must be at least 1")
        for layer in range(1, self.crop_n_layers + 1):
            if self.points_per_side // self.crop_n_points_downscale_factor**layer < 1:
                raise InvalidInput(
                    f"crop_n_points_downscale_factor: crop layer {layer} would have no points "
                    f"(points_per_side {self.points_per_side} / "
                    f"{self.crop_n_points_downscale_factor}**{layer} < 1)"
                )
        if self.min_mask_region_area < 0:
            raise InvalidInput("min_mask_region_area: must be 0 or more")
        if self.output_mode not in OUTPUT_MODES:
            raise InvalidInput(f"output_mode: must be one of {list(OUTPUT_MODES)}")


def check_work(
    params: AmgParams,
    boxes: list[list[int]],
    layers: list[int],
    max_work: int,
) -> None:
    """Refuse a generation whose full-resolution work exceeds ``max_work``.

    The work is counted as the official algorithm does it before any filter: every grid point
    of a crop makes three masks at the crop's size. The grid limits alone do not scale with the
    image: a 128x128 grid is cheap at 320x240 and hours on a 24 MP photo.

    Raises:
        ResourceExhausted: over ``max_work``.
    """
    work = 0
    for (x0, y0, x1, y1), layer in zip(boxes, layers, strict=True):
        side = params.points_per_side // params.crop_n_points_downscale_factor**layer
        work += side * side * 3 * (x1 - x0) * (y1 - y0)
    if work > max_work:
        raise ResourceExhausted(
            f"points_per_side: {work:.3g} mask pixels of work for this image is over the "
            f"limit of {max_work:.3g} (fewer points, fewer crop layers or a smaller image)"
        )


def _check_unit(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InvalidInput(f"{name}: must be in [0, 1]")


def validate_crop_params(crop_n_layers: int, crop_overlap_ratio: float) -> None:
    """The crop part of :meth:`AmgParams.validate` (for EmbedCrops)."""
    AmgParams(crop_n_layers=crop_n_layers, crop_overlap_ratio=crop_overlap_ratio).validate()


def crop_boxes(
    original_size: tuple[int, int], crop_n_layers: int, crop_overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes XYXY and their layer indices, as ``generate_crop_boxes``; the first is the
    whole image."""
    boxes, layers = generate_crop_boxes(original_size, crop_n_layers, crop_overlap_ratio)
    return [[int(v) for v in b] for b in boxes], [int(i) for i in layers]


@dataclass(frozen=True, slots=True)
class AmgRecord:
    """One record of ``generate()``; ``rle`` is the uncompressed RLE ``{"size", "counts"}``."""

    rle: dict[str, Any]
    area: int
    bbox: list[int]
    predicted_iou: float
    point_coords: list[float]
    stability_score: float
    crop_box: list[int]


#: Bytes the mask decoder holds per point of a decoded batch (the (32, 256, 256) upscaled image
#: features, the transformer's image tokens and the mask logits, float32).
DECODE_BYTES_PER_POINT = 24 * 1024 * 1024


def _count(data: MaskData) -> int:
    """Masks held by ``data`` (0 before anything was added)."""
    return next((len(v) for k, v in data.items() if k == "rles"), 0)


def _compact(rles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The official uncompressed RLEs with their counts as int32 arrays, not Python lists of
    ints (about 9x smaller; every official helper reads both the same)."""
    return [{"size": r["size"], "counts": np.asarray(r["counts"], dtype=np.int32)} for r in rles]


class EverythingRun:
    """``SamAutomaticMaskGenerator(sam, **params).generate(image)`` given each crop's embedding,
    split into jobs.

    Run the stages of :meth:`jobs` in order (the callables of one stage on worker threads, at
    once or not), then :meth:`finish`. Each job's memory is bounded by ``work_bytes``;
    ``cancel`` stops a job between its pieces.

    Args:
        sam: the model (prompt encoder, mask decoder, mask threshold).
        params: validated parameters.
        original_size: (H, W) of the image.
        crops: (crop box XYXY, layer index, embedding of that crop) for every box of
            :func:`crop_boxes`, in its order.
        work_bytes: memory budget of one job.
        runtime: the mask decoder's runtime (torch by default).

    Every job (and :meth:`finish`) takes a :class:`Cancel`, set when the caller has gone.
    """

    def __init__(
        self,
        sam: Sam,
        params: AmgParams,
        original_size: tuple[int, int],
        crops: list[tuple[list[int], int, ReadyEmbedding]],
        work_bytes: int,
        runtime: PrefixDecode | None = None,
    ) -> None:
        self.sam = sam
        self.runtime = runtime or torch_runtime(sam)
        self.params = params
        self.original_size = original_size
        self.crops = crops
        self.work_bytes = work_bytes
        self.grids = build_all_layer_point_grids(
            params.points_per_side, params.crop_n_layers, params.crop_n_points_downscale_factor
        )
        self.data = MaskData()

    def jobs(self) -> Iterator[list[Callable[[Cancel], None]]]:
        """Stages, in order: the pieces of a crop's grid (which may run at once, on several
        threads), then that crop's NMS.

        The official batches are split further into pieces of what one decode holds: every
        step of the official ``_process_batch`` is per mask, so pieces concatenated in order
        give the batch's masks in the batch's order.
        """
        step = max(1, self.work_bytes // DECODE_BYTES_PER_POINT)
        for crop_box, layer_idx, emb in self.crops:
            scale = np.array(emb.original_size)[None, ::-1]
            points_for_image = self.grids[layer_idx] * scale
            pieces = [
                points[i : i + step]
                for (points,) in batch_iterator(self.params.points_per_batch, points_for_image)
                for i in range(0, len(points), step)
            ]
            results: list[MaskData | None] = [None] * len(pieces)
            yield [
                functools.partial(self._batch, results, i, emb, points, crop_box)
                for i, points in enumerate(pieces)
            ]
            yield [functools.partial(self._finish_crop, results, crop_box)]

    def _batch(
        self,
        results: list[MaskData | None],
        index: int,
        emb: ReadyEmbedding,
        points: np.ndarray,
        crop_box: list[int],
        cancel: Cancel,
    ) -> None:
        with torch.inference_mode():
            results[index] = self._process_batch(emb, points, crop_box, cancel)

    def _finish_crop(
        self, results: list[MaskData | None], crop_box: list[int], cancel: Cancel
    ) -> None:
        crop_data = MaskData()
        for piece in results:
            assert piece is not None, "every piece of the crop runs before its NMS"
            crop_data.cat(piece)
        with torch.inference_mode():
            if _count(crop_data) == 0:
                return
            keep = batched_nms(
                crop_data["boxes"].float(),
                crop_data["iou_preds"],
                torch.zeros(len(crop_data["boxes"])),
                iou_threshold=self.params.box_nms_thresh,
            )
            crop_data.filter(keep)
            crop_data["boxes"] = uncrop_boxes_xyxy(crop_data["boxes"], crop_box)
            crop_data["points"] = uncrop_points(crop_data["points"], crop_box)
            crop_data["crop_boxes"] = torch.tensor(
                [crop_box for _ in range(len(crop_data["rles"]))]
            )
            self.data.cat(crop_data)

    def finish(self, cancel: Cancel) -> list[AmgRecord]:
        """Deduplicate across crops, postprocess small regions, and build the records."""
        params, data = self.params, self.data
        with torch.inference_mode():
            # Remove duplicate masks between crops, preferring masks from smaller crops. With no
            # mask at all the official code fails on an empty tensor here; the answer is [].
            if len(self.crops) > 1 and _count(data) > 0:
                scores = 1 / box_area(data["crop_boxes"])
                keep = batched_nms(
                    data["boxes"].float(),
                    scores,
                    torch.zeros(len(data["boxes"])),
                    iou_threshold=params.crop_nms_thresh,
                )
                data.filter(keep)
            if _count(data) == 0:
                return []
            data.to_numpy()
            if params.min_mask_region_area > 0:
                data = _postprocess_small_regions(
                    data,
                    params.min_mask_region_area,
                    max(params.box_nms_thresh, params.crop_nms_thresh),
                    cancel,
                )
        return [
            AmgRecord(
                rle=data["rles"][i],
                area=int(area_from_rle(data["rles"][i])),
                bbox=[int(v) for v in box_xyxy_to_xywh(data["boxes"][i]).tolist()],
                predicted_iou=float(data["iou_preds"][i].item()),
                point_coords=[float(v) for v in data["points"][i].tolist()],
                stability_score=float(data["stability_score"][i].item()),
                crop_box=[int(v) for v in box_xyxy_to_xywh(data["crop_boxes"][i]).tolist()],
            )
            for i in range(len(data["rles"]))
        ]

    def _decode(
        self, emb: ReadyEmbedding, points: np.ndarray, cancel: Cancel
    ) -> tuple[Tensor, Tensor]:
        """Logits (N, 3, 256, 256) and predicted IoU (N, 3) of each point, a few at a time.

        ``SamPredictor.predict_torch(points[:, None], labels[:, None], multimask_output=True,
        return_logits=True)``, with the image-side decoder work taken from the stored prefix.
        """
        sam = self.sam
        if emb.prefix is None:
            raise ValueError("a SAM 1 embedding always has its prefix")
        transform = ResizeLongestSide(sam.image_encoder.img_size)
        coords = torch.as_tensor(transform.apply_coords(points, emb.original_size))
        step = max(1, self.work_bytes // DECODE_BYTES_PER_POINT)
        logits, ious = [], []
        for start in range(0, len(coords), step):
            cancel.check()
            c = coords[start : start + step]
            labels = torch.ones(c.shape[0], dtype=torch.int)
            sparse, _ = sam.prompt_encoder(
                points=(c[:, None, :], labels[:, None]), boxes=None, masks=None
            )
            low_res, iou = self.runtime(emb.prefix, sparse, True)
            logits.append(low_res)
            ious.append(iou)
        return torch.cat(logits), torch.cat(ious)

    def _process_batch(
        self, emb: ReadyEmbedding, points: np.ndarray, crop_box: list[int], cancel: Cancel
    ) -> MaskData:
        """The official ``_process_batch``, per mask where it works at full resolution."""
        sam, params = self.sam, self.params
        orig_h, orig_w = self.original_size
        low_res, iou_preds = self._decode(emb, points, cancel)
        low_res = low_res.flatten(0, 1)
        iou_preds = iou_preds.flatten(0, 1)
        point_rows = torch.as_tensor(points.repeat(3, axis=0))
        # The official filter on predicted IoU, applied before upsampling: it reads only the
        # IoU, so the kept masks are the same and the others are never upsampled.
        if params.pred_iou_thresh > 0.0:
            keep = iou_preds > params.pred_iou_thresh
            low_res, iou_preds, point_rows = low_res[keep], iou_preds[keep], point_rows[keep]
        out = MaskData(
            iou_preds=iou_preds[:0],
            points=point_rows[:0],
            stability_score=iou_preds[:0],
            boxes=torch.zeros((0, 4), dtype=torch.int64),
            rles=[],
        )
        pieces = upscaled(sam, low_res, emb.input_size, emb.original_size, self.work_bytes, cancel)
        for start, masks in pieces:
            piece = MaskData(
                masks=masks,
                iou_preds=iou_preds[start : start + len(masks)],
                points=point_rows[start : start + len(masks)],
            )
            piece["stability_score"] = calculate_stability_score(
                piece["masks"], sam.mask_threshold, params.stability_score_offset
            )
            if params.stability_score_thresh > 0.0:
                piece.filter(piece["stability_score"] >= params.stability_score_thresh)
            piece["masks"] = piece["masks"] > sam.mask_threshold
            piece["boxes"] = batched_mask_to_box(piece["masks"])
            keep = ~is_box_near_crop_edge(piece["boxes"], crop_box, [0, 0, orig_w, orig_h])
            if not torch.all(keep):
                piece.filter(keep)
            piece["masks"] = uncrop_masks(piece["masks"], crop_box, orig_h, orig_w)
            piece["rles"] = _compact(mask_to_rle_pytorch(piece["masks"]))
            del piece["masks"]
            out.cat(piece)
        return out


def _postprocess_small_regions(
    data: MaskData, min_area: int, nms_thresh: float, cancel: Cancel
) -> MaskData:
    """``SamAutomaticMaskGenerator.postprocess_small_regions`` (needs OpenCV), one full-size
    mask at a time: only a changed mask's box and RLE are kept, which is all the official
    code later reads of it."""
    from segment_anything.utils.amg import remove_small_regions  # imports cv2 lazily

    scores: list[float] = []
    boxes: list[Tensor] = []
    changed_rles: dict[int, dict[str, Any]] = {}
    for i, rle in enumerate(data["rles"]):
        cancel.check()
        mask = rle_to_mask(rle)
        mask, changed = remove_small_regions(mask, min_area, mode="holes")
        unchanged = not changed
        mask, changed = remove_small_regions(mask, min_area, mode="islands")
        unchanged = unchanged and not changed
        tensor = torch.as_tensor(mask).unsqueeze(0)
        boxes.append(batched_mask_to_box(tensor)[0])
        scores.append(float(unchanged))
        if not unchanged:
            changed_rles[i] = _compact(mask_to_rle_pytorch(tensor))[0]
    box_tensor = torch.stack(boxes)
    keep = batched_nms(
        box_tensor.float(),
        torch.as_tensor(scores),
        torch.zeros(len(box_tensor)),
        iou_threshold=nms_thresh,
    )
    for i in keep.tolist():
        if scores[i] == 0.0:
            data["rles"][i] = changed_rles[i]
            data["boxes"][i] = box_tensor[i]
    data.filter(keep)
    return data

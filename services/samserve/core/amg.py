"""Segment everything == ``SamAutomaticMaskGenerator.generate`` over stored embeddings.

This mirrors the official ``_generate_masks``, ``_process_crop``, ``_process_batch`` and
``postprocess_small_regions`` step by step with the official ``segment_anything.utils.amg``
helpers and torchvision's ``batched_nms``; only ``SamPredictor.set_image``/``predict_torch`` are
replaced by a batched decode on a stored embedding (one per crop, see
docs/segment-everything.md). Parameters are checked explicitly (never by ``assert``), and an
image where no crop yields a mask answers an empty list (the official code raises IndexError).
"""

from __future__ import annotations

import math
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
from torchvision.ops.boxes import batched_nms, box_area

from samserve.core.errors import InvalidInput, ResourceExhausted
from samserve.core.prefix import ReadyEmbedding
from samserve.core.prefix import decode as prefix_decode

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
        if self.min_mask_region_area < 0:
            raise InvalidInput("min_mask_region_area: must be 0 or more")
        if self.output_mode not in OUTPUT_MODES:
            raise InvalidInput(f"output_mode: must be one of {list(OUTPUT_MODES)}")


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


def generate(
    sam: Sam,
    params: AmgParams,
    original_size: tuple[int, int],
    crops: list[tuple[list[int], int, ReadyEmbedding]],
) -> list[AmgRecord]:
    """``SamAutomaticMaskGenerator(sam, **params).generate(image)`` given each crop's embedding.

    Args:
        sam: the model (prompt encoder, mask decoder, mask threshold).
        params: validated parameters.
        original_size: (H, W) of the image.
        crops: (crop box XYXY, layer index, embedding of that crop) for every box of
            :func:`crop_boxes`, in its order.

    Returns:
        The records in ``generate()`` order.
    """
    grids = build_all_layer_point_grids(
        params.points_per_side, params.crop_n_layers, params.crop_n_points_downscale_factor
    )
    data = MaskData()
    with torch.inference_mode():
        for crop_box, layer_idx, emb in crops:
            data.cat(_process_crop(sam, params, grids, emb, crop_box, layer_idx, original_size))
        # Remove duplicate masks between crops, preferring masks from smaller crops. With no
        # mask at all the official code fails on an empty tensor here; the answer is [].
        if len(crops) > 1 and len(data["rles"]) > 0:
            scores = 1 / box_area(data["crop_boxes"])
            keep = batched_nms(
                data["boxes"].float(),
                scores,
                torch.zeros(len(data["boxes"])),
                iou_threshold=params.crop_nms_thresh,
            )
            data.filter(keep)
        if len(data["rles"]) == 0:
            return []
        data.to_numpy()
        if params.min_mask_region_area > 0:
            data = _postprocess_small_regions(
                data,
                params.min_mask_region_area,
                max(params.box_nms_thresh, params.crop_nms_thresh),
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


def _process_crop(
    sam: Sam,
    params: AmgParams,
    grids: list[np.ndarray],
    emb: ReadyEmbedding,
    crop_box: list[int],
    layer_idx: int,
    orig_size: tuple[int, int],
) -> MaskData:
    cropped_im_size = emb.original_size
    points_scale = np.array(cropped_im_size)[None, ::-1]
    points_for_image = grids[layer_idx] * points_scale
    data = MaskData()
    for (points,) in batch_iterator(params.points_per_batch, points_for_image):
        data.cat(_process_batch(sam, params, emb, points, crop_box, orig_size))
    if len(data["rles"]) == 0:
        return data
    keep = batched_nms(
        data["boxes"].float(),
        data["iou_preds"],
        torch.zeros(len(data["boxes"])),
        iou_threshold=params.box_nms_thresh,
    )
    data.filter(keep)
    data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
    data["points"] = uncrop_points(data["points"], crop_box)
    data["crop_boxes"] = torch.tensor([crop_box for _ in range(len(data["rles"]))])
    return data


def _process_batch(
    sam: Sam,
    params: AmgParams,
    emb: ReadyEmbedding,
    points: np.ndarray,
    crop_box: list[int],
    orig_size: tuple[int, int],
) -> MaskData:
    orig_h, orig_w = orig_size
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    coords = torch.as_tensor(transform.apply_coords(points, emb.original_size))
    labels = torch.ones(coords.shape[0], dtype=torch.int)
    # SamPredictor.predict_torch(points[:, None], labels[:, None], multimask_output=True,
    # return_logits=True), with the image-side decoder work taken from the stored prefix.
    sparse, _ = sam.prompt_encoder(
        points=(coords[:, None, :], labels[:, None]), boxes=None, masks=None
    )
    low_res, iou_preds = prefix_decode(sam, emb.prefix, sparse, True)
    masks = sam.postprocess_masks(low_res, emb.input_size, emb.original_size)

    data = MaskData(
        masks=masks.flatten(0, 1),
        iou_preds=iou_preds.flatten(0, 1),
        points=torch.as_tensor(points.repeat(masks.shape[1], axis=0)),
    )
    del masks
    if params.pred_iou_thresh > 0.0:
        data.filter(data["iou_preds"] > params.pred_iou_thresh)
    data["stability_score"] = calculate_stability_score(
        data["masks"], sam.mask_threshold, params.stability_score_offset
    )
    if params.stability_score_thresh > 0.0:
        data.filter(data["stability_score"] >= params.stability_score_thresh)
    data["masks"] = data["masks"] > sam.mask_threshold
    data["boxes"] = batched_mask_to_box(data["masks"])
    keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
    if not torch.all(keep):
        data.filter(keep)
    data["masks"] = uncrop_masks(data["masks"], crop_box, orig_h, orig_w)
    data["rles"] = mask_to_rle_pytorch(data["masks"])
    del data["masks"]
    return data


def _postprocess_small_regions(data: MaskData, min_area: int, nms_thresh: float) -> MaskData:
    """``SamAutomaticMaskGenerator.postprocess_small_regions`` (needs OpenCV)."""
    from segment_anything.utils.amg import remove_small_regions  # imports cv2 lazily

    new_masks = []
    scores = []
    for rle in data["rles"]:
        mask = rle_to_mask(rle)
        mask, changed = remove_small_regions(mask, min_area, mode="holes")
        unchanged = not changed
        mask, changed = remove_small_regions(mask, min_area, mode="islands")
        unchanged = unchanged and not changed
        new_masks.append(torch.as_tensor(mask).unsqueeze(0))
        scores.append(float(unchanged))
    masks = torch.cat(new_masks, dim=0)
    boxes = batched_mask_to_box(masks)
    keep = batched_nms(
        boxes.float(), torch.as_tensor(scores), torch.zeros(len(boxes)), iou_threshold=nms_thresh
    )
    for i in keep:
        if scores[i] == 0.0:
            data["rles"][i] = mask_to_rle_pytorch(masks[i].unsqueeze(0))[0]
            data["boxes"][i] = boxes[i]
    data.filter(keep)
    return data
